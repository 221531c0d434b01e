// Drives the admin web UI in a real headless Chromium (Debian /usr/bin/chromium) with
// playwright-core, as an operator would: wrong password, login, status page, follow a
// channel, publish from the actions page and from the channel page, see both arrive, read
// the connections page. One JSON
// object per line on stdout ({"step": ...} observations, {"fatal": ...} on failure,
// {"done": true} at the end); pytest asserts on them. Screenshots of each page go to
// SCREENSHOT_DIR.
// env: CHROMIUM, USER_DATA_DIR, ADMIN_URL, PASSWORD, CHANNEL, NODE_NAMES (comma separated;
//      the status page must show one client on each), PRESENCE (clients expected in the
//      channel's presence once followed, one of them joining after the "following" step),
//      CLIENTS (then in the cluster), SCREENSHOT_DIR, SCENARIO_TIMEOUT_MS
import { createRequire } from 'node:module';

const require = createRequire(new URL('../interop/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const TIMEOUT_MS = Number(process.env.SCENARIO_TIMEOUT_MS || 25000);
let context = null;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function fatal(message) {
  emit({ fatal: String(message) });
  if (context) await context.close().catch(() => {});
  process.exit(2);
}

setTimeout(() => fatal(`driver timeout after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();
process.on('unhandledRejection', (reason) => fatal(reason && reason.stack ? reason.stack : reason));

const env = (name) => process.env[name] || fatal(`environment variable ${name} is required`);
const url = env('ADMIN_URL');
const shots = env('SCREENSHOT_DIR');
const channel = env('CHANNEL');

context = await chromium.launchPersistentContext(env('USER_DATA_DIR'), {
  executablePath: env('CHROMIUM'),
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-sync',
    '--disable-background-networking', '--disable-component-update'],
  viewport: { width: 1000, height: 480 },
  timeout: 15000,
});
const page = context.pages()[0] || (await context.newPage());
page.on('pageerror', (err) => emit({ step: 'pageerror', message: String(err) }));
page.on('console', (msg) => { if (msg.type() === 'error') emit({ step: 'console', text: msg.text() }); });

await page.goto(url, { waitUntil: 'load', timeout: 10000 });
await page.waitForSelector('#login:not([hidden])');

// Without a session every admin API answers 401: each method the actions page offers,
// the legacy API endpoint, the status and the channel stream.
const anonymous = await page.evaluate(async () => {
  const out = {};
  const methods = [...document.querySelectorAll('#method option')].map((option) => option.value);
  const calls = [...methods.map((m) => ['admin/api/' + m, 'POST']), ['admin/api', 'POST'],
    ['admin/status', 'GET'], ['admin/channel?channel=news', 'GET']];
  for (const [path, method] of calls) {
    out[path] = (await fetch(path, { method, body: method === 'POST' ? '{}' : undefined })).status;
  }
  return out;
});
emit({ step: 'anonymous', statuses: anonymous });

await page.fill('#password', 'not the password');
await page.click('#login-form button[type=submit]');
await page.waitForSelector('#login-error:not([hidden])');
emit({ step: 'wrong-password', text: await page.textContent('#login-error'), appHidden: await page.isHidden('#app') });
await page.screenshot({ path: `${shots}/admin-login.png`, fullPage: true });

await page.fill('#password', env('PASSWORD'));
await page.click('#login-form button[type=submit]');
await page.waitForSelector('#app:not([hidden])');
const names = env('NODE_NAMES').split(',');
// Nodes announce themselves every few seconds: wait until the page, refreshing by itself,
// shows every node with its client.
await page.waitForFunction((expected) => {
  const rows = [...document.querySelectorAll('#nodes tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent));
  return expected.every((name) => rows.some((row) => row[0].startsWith(name) && row[3] === '1'));
}, names, { timeout: 15000 });
const rows = await page.$$eval('#nodes tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
const summary = await page.textContent('#summary');
emit({ step: 'status', rows, summary });
await page.screenshot({ path: `${shots}/admin-status.png`, fullPage: true });

// Follow the channel first, so the publication has somewhere to arrive.
await page.click('nav button[data-page=channel]');
await page.fill('#watch-channel', channel);
await page.click('#watch');
await page.waitForFunction(() => document.querySelector('#watch-state').textContent.startsWith('following'));
emit({ step: 'following', state: await page.textContent('#watch-state') });
// pytest connects one more client now: its join arrives, and presence fills up.
const presence = Number(env('PRESENCE'));
await page.waitForFunction((n) => document.querySelectorAll('#presence tbody tr').length === n, presence, { timeout: 15000 });
await page.waitForSelector('#events li.join', { timeout: 10000 });

await page.click('nav button[data-page=actions]');
await page.selectOption('#method', 'publish');
await page.fill('#fields [name=channel]', channel);
await page.fill('#fields [name=data]', '{"text": "hello from the actions page"}');
await page.click('#run');
await page.waitForFunction(() => document.querySelector('#reply').textContent.trim() !== '');
emit({ step: 'reply', text: await page.textContent('#reply') });
await page.screenshot({ path: `${shots}/admin-actions.png`, fullPage: true });
await page.selectOption('#method', 'info');
await page.click('#run');
await page.waitForFunction(() => document.querySelector('#reply').textContent.includes('nodes'));

await page.click('nav button[data-page=channel]');
await page.waitForFunction(() => [...document.querySelectorAll('#events li.pub')].length > 0, null, { timeout: 10000 });
// The quick start's way: the Publish button of the channel page.
await page.click('#quick-publish button[type=submit]');
await page.waitForFunction(() => [...document.querySelectorAll('#events li.pub')].length > 1, null, { timeout: 10000 });
emit({
  step: 'quick-publish', result: await page.textContent('#quick-result'),
});
emit({
  step: 'inspector',
  events: await page.$$eval('#events li', (lis) => lis.map((li) => [li.className, li.textContent])),
  presence: await page.$$eval('#presence tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent))),
});
await page.screenshot({ path: `${shots}/admin-channel.png`, fullPage: true });

await page.click('nav button[data-page=connections]');
await page.waitForFunction((clients) => document.querySelector('#api-stats tbody').textContent.includes('info')
  && document.querySelector('#totals dd').textContent === clients, env('CLIENTS'), { timeout: 15000 });
emit({
  step: 'connections',
  totals: await page.$$eval('#totals > *', (items) => items.map((el) => el.textContent)),
  transports: await page.$$eval('#transports tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent))),
  api: await page.$$eval('#api-stats tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent))),
});
await page.screenshot({ path: `${shots}/admin-connections.png`, fullPage: true });

await page.click('#logout');
await page.waitForSelector('#login:not([hidden])');
const afterLogout = await page.evaluate(async () => (await fetch('admin/status')).status);
emit({ step: 'logout', status: afterLogout, token: await page.evaluate(() => sessionStorage.length) });
emit({ done: true });
await context.close();
process.exit(0);
