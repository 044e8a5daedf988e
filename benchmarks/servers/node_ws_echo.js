// Echo and broadcast server on Node's `ws` 8 (with bufferutil), installed in ../node/.
// Usage: node node_ws_echo.js --host 127.0.0.1 --port 9000 [--no-compression]
// ws has no broadcast helper; its docs loop over the clients, which /trigger does here.
'use strict';

const path = require('path');
const { createRequire } = require('module');

const nodeRequire = createRequire(path.join(__dirname, '..', 'node', 'package.json'));
const { WebSocketServer, WebSocket } = nodeRequire('ws');

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 9000, compression: true };
  for (let i = 2; i < argv.length; i++) {
    if (argv[i] === '--host') args.host = argv[++i];
    else if (argv[i] === '--port') args.port = Number(argv[++i]);
    else if (argv[i] === '--no-compression') args.compression = false;
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return args;
}

const args = parseArgs(process.argv);
const fanout = new Set();

// perMessageDeflate is off by default in ws; turn it on (with its default settings) to match
// the Python servers, which negotiate it whenever a client offers it.
const wss = new WebSocketServer({
  host: args.host,
  port: args.port,
  perMessageDeflate: args.compression,
  clientTracking: false,
});

wss.on('connection', (ws, req) => {
  const route = req.url.split('?')[0];
  if (route === '/fanout') {
    fanout.add(ws);
    ws.on('close', () => fanout.delete(ws));
  } else if (route === '/trigger') {
    ws.on('message', (data, isBinary) => {
      for (const client of fanout) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
});

wss.on('listening', () => {
  let bufferutil = 'no';
  try {
    nodeRequire('bufferutil');
    bufferutil = 'yes';
  } catch (e) {
    // ws falls back to its JavaScript masking
  }
  process.stderr.write(`ws ${nodeRequire('ws/package.json').version}, bufferutil: ${bufferutil}\n`);
  console.log(`listening on ws://${args.host}:${args.port}/`);
});
