// A hub client on Node's `ws`: node client.mjs WS_URL TOKEN CHANNEL COUNT
// Connects (subprotocol pulsewire.v1.json), subscribes, prints "ready", then prints each
// publication as one JSON line; after COUNT of them it publishes {"from": "node"} itself,
// prints that publication when it comes back, and exits 0. Any error: exit 1.
import WebSocket from "ws";

const [url, token, channel, count] = process.argv.slice(2);
const expected = Number(count);
const ws = new WebSocket(url, "pulsewire.v1.json");
const fail = (why) => {
  console.error(`node client: ${why}`);
  process.exit(1);
};
setTimeout(() => fail("timed out"), 15000).unref();

let received = 0;
const send = (id, method, params) => ws.send(JSON.stringify({ id, method, params }));

ws.on("open", () => {
  if (ws.protocol !== "pulsewire.v1.json") fail(`subprotocol ${ws.protocol}`);
  send(1, "connect", { token });
  send(2, "subscribe", { channel });
});
ws.on("message", (raw, isBinary) => {
  if (isBinary) fail("binary message on a JSON connection");
  for (const line of raw.toString().split("\n").filter(Boolean)) {
    const message = JSON.parse(line);
    if (message.error) fail(`error reply ${JSON.stringify(message)}`);
    if (message.id === 2) console.log("ready");
    if (message.push === "publication") {
      console.log(JSON.stringify({ data: message.data, offset: message.offset }));
      received += 1;
      if (received === expected) send(3, "publish", { channel, data: { from: "node" } });
      if (received === expected + 1) ws.close(1000);
    }
  }
});
ws.on("close", (code, reason) => {
  if (received === expected + 1 && code === 1000) process.exit(0);
  fail(`closed ${code} ${reason}`);
});
ws.on("error", (error) => fail(error.message));
