// Node `ws` broadcast server: a baseline for bench/run.py, same wire shape as
// baseline_autobahn.py. A WebSocket client at /connection/websocket that sends a text
// message containing "subscribe" joins the subscriber set and gets
// {"id":2,"subscribe":{}}. POST /publish takes one {"channel","data"} object per line;
// each is JSON-encoded once into rtserver's push envelope and sent with ws.send() to
// every subscriber (the idiomatic ws broadcast).
//
// node bench/baseline_ws.js --port 8002 [--interface 127.0.0.1]
"use strict";

const http = require("http");
const path = require("path");

let WebSocketServer;
try {
  ({ WebSocketServer } = require("ws"));
} catch (e) {
  ({ WebSocketServer } = require(
    path.join(__dirname, "..", "tests", "interop", "node_modules", "ws"),
  ));
}

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg("--port", "8002"));
const host = arg("--interface", "127.0.0.1");
const SUBSCRIBED = Buffer.from('{"id":2,"subscribe":{}}');
const subscribers = new Set();

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let count = 0;
    for (const line of Buffer.concat(chunks).toString().split("\n")) {
      if (!line.trim()) continue;
      const msg = JSON.parse(line);
      const push = Buffer.from(
        JSON.stringify({ push: { channel: msg.channel, pub: { data: msg.data } } }),
      );
      for (const ws of subscribers) ws.send(push, { binary: false });
      count += 1;
    }
    const body = `{"result":{"published":${count}}}`;
    res.writeHead(200, { "Content-Type": "application/json", "Content-Length": body.length });
    res.end(body);
  });
});

const wss = new WebSocketServer({ server, path: "/connection/websocket", perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    if (!isBinary && data.toString().includes("subscribe")) {
      subscribers.add(ws);
      ws.send(SUBSCRIBED, { binary: false });
    }
  });
  ws.on("close", () => subscribers.delete(ws));
});

server.keepAliveTimeout = 60000;
server.listen(port, host, () => console.error(`ws baseline on ${host}:${port}`));
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
