// Node Socket.IO 4 hub peer for benchmarks/hub_peers.py, installed in ../node/.
// Usage: node node_socketio_hub.js [--host 127.0.0.1] [--port 0] [--ping-interval SECONDS]
// WebSocket transport only. A client joins a room by emitting `join` with its name (acknowledged
// with "ok"); POST /api/publish {"channel": ROOM, "data": ...} emits `pub` to that room and
// answers {"result": {}}, like pulsewire's HTTP API. Prints `listening on http://HOST:PORT/`.
'use strict';

const http = require('http');
const path = require('path');
const { createRequire } = require('module');

const nodeRequire = createRequire(path.join(__dirname, '..', 'node', 'package.json'));
const { Server } = nodeRequire('socket.io');

// --ping-interval S: ping every S seconds, drop a client silent S more (default 25 + 20)
const args = { host: '127.0.0.1', port: 0, pingInterval: 0 };
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--host') args.host = process.argv[++i];
  else if (process.argv[i] === '--port') args.port = Number(process.argv[++i]);
  else if (process.argv[i] === '--ping-interval') args.pingInterval = Number(process.argv[++i]) * 1000;
  else throw new Error(`unknown argument ${process.argv[i]}`);
}

function answer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

// Socket.IO intercepts /socket.io/ on this server; every other request lands here.
const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/api/publish') return answer(res, 404, { error: 'not found' });
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const params = JSON.parse(Buffer.concat(chunks).toString());
    io.to(params.channel).emit('pub', params.data);
    answer(res, 200, { result: {} });
  });
});
server.keepAliveTimeout = 600000;

const options = { transports: ['websocket'], serveClient: false };
if (args.pingInterval) Object.assign(options, { pingInterval: args.pingInterval, pingTimeout: args.pingInterval });
const io = new Server(server, options);
io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack('ok');
  });
});

server.listen(args.port, args.host, 4096, () => {
  console.log(`listening on http://${args.host}:${server.address().port}/`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
