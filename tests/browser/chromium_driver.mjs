// Drives a real headless Chromium (Debian /usr/bin/chromium, never a downloaded browser) with
// playwright-core: opens PAGE_URL in a fresh profile and relays what the page reports.
//
// Protocol with pytest (interop_support.NodeScenario):
//   stdout: one JSON object per line:
//     {"source":"page", ...}    an object the page passed to window.__rtReport
//     {"source":"net", ...}     a response/failed request to RT_URL as seen by the browser
//     {"source":"console"|"pageerror", ...}
//     {"ready":"loaded"}        the page was loaded
//     {"result":"<name>", "value":...} answer to an "eval <name>" command
//     {"fatal":"..."} (exit 2) on failure or timeout, {"done":true} at the end
//   stdin: "eval state|history|presence", "call <name>" (window.__rt[name]()) or "close".
// env: CHROMIUM, USER_DATA_DIR, PAGE_URL, RT_URL, SCENARIO_TIMEOUT_MS, CHROMIUM_QUIC (1: QUIC on)
import { createRequire } from 'node:module';
import readline from 'node:readline';

const require = createRequire(new URL('../interop/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 25000);
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  // QUIC stays off unless the scenario needs it (WebTransport): CHROMIUM_QUIC=1
  ...(process.env.CHROMIUM_QUIC === '1' ? [] : ['--disable-quic']),
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

let context = null;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function exit(code) {
  const closing = context;
  context = null;
  if (closing) await closing.close().catch(() => {});
  process.exit(code);
}

function fatal(message) {
  emit({ fatal: String(message) });
  return exit(2);
}

function env(name) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    emit({ fatal: `environment variable ${name} is required` });
    process.exit(2);
  }
  return value;
}

setTimeout(() => fatal(`driver timeout after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();
process.on('unhandledRejection', (reason) => fatal(`unhandled rejection: ${reason && reason.stack ? reason.stack : reason}`));
process.on('SIGTERM', () => exit(143));

const rtUrl = env('RT_URL');
const rtPath = (url) => (url.startsWith(rtUrl) ? new URL(url).pathname : null);

context = await chromium.launchPersistentContext(env('USER_DATA_DIR'), {
  executablePath: env('CHROMIUM'),
  headless: true,
  args: CHROMIUM_ARGS,
  timeout: 15000,
});
const page = context.pages()[0] || (await context.newPage());
await page.exposeFunction('__rtReport', (obj) => emit({ source: 'page', ...obj }));
page.on('console', (msg) => emit({ source: 'console', type: msg.type(), text: msg.text() }));
page.on('pageerror', (err) => emit({ source: 'pageerror', message: String(err) }));
page.on('response', (response) => {
  const path = rtPath(response.url());
  if (path) emit({ source: 'net', path, method: response.request().method(), status: response.status() });
});
page.on('requestfailed', (request) => {
  const path = rtPath(request.url());
  if (path) {
    const failure = request.failure();
    emit({ source: 'net', path, method: request.method(), failed: failure ? failure.errorText : 'unknown' });
  }
});
await page.goto(env('PAGE_URL'), { waitUntil: 'load', timeout: 10000 });
emit({ ready: 'loaded', userAgent: await page.evaluate(() => navigator.userAgent) });

const evaluations = {
  state: () => page.evaluate(() => window.__rt.state()),
  history: () => page.evaluate(() => window.__rt.history()),
  presence: () => page.evaluate(() => window.__rt.presence()),
};

const rl = readline.createInterface({ input: process.stdin });
for await (const raw of rl) {
  const line = raw.trim();
  if (line === 'close') {
    emit({ done: true });
    await exit(0);
  } else if (line.startsWith('eval ') && evaluations[line.slice(5)]) {
    const name = line.slice(5);
    emit({ result: name, value: await evaluations[name]() });
  } else if (line.startsWith('call ')) {
    // a function of the page's window.__rt (the page decides what it offers)
    const name = line.slice(5);
    emit({ result: name, value: await page.evaluate((n) => window.__rt[n](), name) });
  } else if (line) {
    await fatal(`unknown command ${JSON.stringify(line)}`);
  }
}
await fatal('stdin closed before "close"');
