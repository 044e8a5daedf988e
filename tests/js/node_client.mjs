// The npm package in Node (tests/js/test_js_package.py): copied next to a node_modules where
// the packed tarball was installed, so "pulsewire" resolves as it does for any user.
//
//   node [--experimental-websocket] node_client.mjs URL TOKEN CHANNEL TRANSPORT
//
// Connects to the hub at URL (its http:// base) over TRANSPORT ("websocket": Node's global
// WebSocket; "longpoll": fetch), subscribes to CHANNEL and prints one JSON line per step:
// {"ready": ...} once subscribed; the first publication (the test publishes it through
// the HTTP API); then it publishes one itself and prints it as received, with its presence
// stats and history; then disconnects and exits 0. Anything else: a message on stderr, exit 1.

import { Client, PulsewireError, Subscription } from "pulsewire";

const [url, token, channel, transport] = process.argv.slice(2);
const print = (/** @type {object} */ value) => console.log(JSON.stringify(value));
const fail = (/** @type {unknown} */ error) => {
  console.error("node client failed:", error);
  process.exit(1);
};
setTimeout(() => fail("no result in 20 s"), 20000).unref();

const client = new Client(url, { token, transports: [transport], timeout: 5000 });
client.on("error", (event) => console.error("client error:", event));
client.on("disconnected", ({ code, reason }) => console.error("disconnected:", code, reason));

/** @type {((pub: any) => void)[]} */
const waiting = [];
const next = () => new Promise((resolve) => waiting.push(resolve));
const sub = client.subscribe(channel, {
  onPublication: (pub) => waiting.shift()?.(pub),
  onError: fail,
});
client.connect();

try {
  const connected = await client.ready();
  await sub.ready();
  const first = next();
  print({
    ready: true,
    transport: connected.transport,
    subscription: sub instanceof Subscription,
    recoverable: sub.recoverable,
  });
  const fromApi = await first;
  print({ data: fromApi.data, offset: fromApi.offset });
  const own = next();
  const published = await sub.publish({ from: "node" });
  const received = await own;
  print({ data: received.data, offset: received.offset, published: published.offset });
  const stats = await sub.presenceStats();
  const history = await sub.history({ limit: 10 });
  print({ clients: stats.num_clients, history: history.publications.map((p) => p.data) });
  try {
    await client.publish("nope:x", 1);
  } catch (error) {
    print({ error: error instanceof PulsewireError, code: error.code });
  }
  client.disconnect();
  print({ state: client.state });
} catch (error) {
  fail(error);
}
