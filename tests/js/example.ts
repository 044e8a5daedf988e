// A small chat client using the whole API of pulsewire.js, type-checked (never run) by
// tests/js/test_js_package.py with `tsc --noEmit --strict`. The `@ts-expect-error` lines
// are misuses the declarations must refuse: tsc fails if one of them type-checks.

import {
  Client,
  PulsewireError,
  Subscription,
  type ClientErrorEvent,
  type ClientInfo,
  type ClientOptions,
  type ClientState,
  type ConnectedContext,
  type DisconnectInfo,
  type Endpoints,
  type HistoryResult,
  type Publication,
  type PublishResult,
  type PresenceStats,
  type StreamPosition,
  type SubscribedContext,
  type SubscriptionState,
  type TransportName,
  type Unlisten,
} from "pulsewire";

interface ChatMessage {
  text: string;
  from: string;
}

const options: ClientOptions = {
  getToken: async () => {
    const response = await fetch("/token");
    return ((await response.json()) as { token: string }).token;
  },
  transports: ["websocket", "sse", "longpoll"],
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  pingInterval: 25000,
  pingTimeout: 10000,
  timeout: 10000,
  data: { app: "example" },
  websocketUrl: "wss://rt.example.com/connection/websocket",
  sseUrl: "https://rt.example.com/connection/sse",
  longpollUrl: "https://rt.example.com/connection/longpoll",
};
const withToken = new Client("ws://localhost:8000/connection/websocket", { token: "jwt" });
const client = new Client(new URL("https://rt.example.com"), options);

// @ts-expect-error: not a transport
new Client("/", { transports: ["carrier-pigeon"] });
// @ts-expect-error: tokens are strings
new Client("/", { token: 42 });

const timeout: number = client.options.timeout; // defaults filled in
const urls: Endpoints = client.urls;
const state: ClientState = client.state;
const transport: TransportName | null = client.transport;
console.log(timeout, urls.websocket, urls.sse, urls.longpoll, state, transport, withToken);

const offState: Unlisten = client.on("state", ({ state, reason }) => {
  console.log(`${state}: ${reason}`);
});
client.on("connected", (ctx: ConnectedContext) => {
  const ttl: number | undefined = ctx.ttl;
  console.log(ctx.client, ctx.user, ctx.version, ctx.node, ctx.transport, ctx.expires, ttl);
});
const onDisconnected = ({ code, reason, reconnect }: DisconnectInfo): void => {
  console.log(code, reason, reconnect);
};
client.on("disconnected", onDisconnected);
client.off("disconnected", onDisconnected);
client.on("message", ({ data }) => console.log(data));
client.on("error", (event: ClientErrorEvent) => {
  switch (event.type) {
    case "transport":
      console.log(event.transport, event.reason);
      break;
    case "token":
    case "refresh":
      console.log(event.error);
      break;
    case "subscribe": {
      const error: PulsewireError = event.error; // a server-side subscription failed
      console.log(event.channel, error.code);
      break;
    }
    default: {
      const never: never = event; // every kind of error is handled above
      console.log(never);
    }
  }
});
// The server-side subscriptions' events (the server subscribed this connection).
client.on("subscribed", ({ channel, recovering, recovered }) => {
  const sub: Subscription | null = client.getServerSubscription(channel);
  console.log(sub?.position, recovering, recovered);
});
client.on("publication", (pub: Publication) => console.log(pub.channel, pub.data, pub.offset));
client.on("join", ({ channel, info }) => console.log(channel, info.user));
client.on("leave", ({ channel, info }) => console.log(channel, info.client));
client.on("unsubscribed", ({ channel, code, reason }) => console.log(channel, code, reason));
for (const [channel, sub] of client.serverSubscriptions) console.log(channel, sub.recoverable);
client.on("connected", ({ server_subs }) => console.log(Object.keys(server_subs ?? {})));
// @ts-expect-error: no such event
client.on("publications", () => {});
// @ts-expect-error: a "state" listener gets an object
client.on("state", (state: string) => console.log(state));
offState();

client.connect();

async function chat(): Promise<void> {
  await client.ready();
  await client.ready(5000);
  const lobby: Subscription<ChatMessage> = client.subscribe<ChatMessage>("chat:lobby", {
    onPublication: (pub: Publication<ChatMessage>) => {
      const offset: number | undefined = pub.offset;
      const who: ClientInfo | undefined = pub.info;
      console.log(pub.channel, pub.data.text, pub.data.from, offset, who?.user, pub.tags);
    },
    onSubscribed: (ctx: SubscribedContext) => {
      if (ctx.recovering && !ctx.recovered) console.log("reload the state");
      console.log(ctx.channel, ctx.recoverable, ctx.offset, ctx.epoch);
    },
    onUnsubscribed: ({ channel, code, reason }) => console.log(channel, code, reason),
    onJoin: ({ channel, info }) => console.log(channel, info.client, info.conn_info),
    onLeave: ({ info }) => console.log(info.user, info.chan_info),
    onError: (error: PulsewireError) => console.log(error.code, error.message, error.name),
    onState: ({ channel, state, reason }) => console.log(channel, state, reason),
  });
  // @ts-expect-error: not a ChatMessage
  await lobby.publish({ text: 1 });
  // @ts-expect-error: no such handler
  client.subscribe("chat:other", { onPublications: () => {} });

  const offJoin = lobby.on("join", ({ info }) => console.log(info.user));
  offJoin();
  lobby.on("publication", (pub) => console.log(pub.data.text));
  lobby.on("error", (error) => console.log(error.code));
  lobby.on("state", ({ state }) => {
    const s: SubscriptionState = state;
    console.log(s);
  });
  // @ts-expect-error: subscriptions have no "connected" event
  lobby.on("connected", () => {});

  const same: Subscription<ChatMessage> = await lobby.ready();
  await lobby.ready(1000);
  console.log(same.client === client, same.channel, same.state, same.recoverable);
  const offset: number | null = lobby.offset;
  const epoch: string | null = lobby.epoch;
  const position: StreamPosition | null = lobby.position;
  console.log(offset, epoch, position?.offset, position?.epoch);

  const published: PublishResult = await lobby.publish({ text: "hi", from: "ann" });
  console.log(published.offset, published.epoch);
  const present: Record<string, ClientInfo> = await lobby.presence();
  const stats: PresenceStats = await lobby.presenceStats();
  console.log(Object.keys(present).length, stats.num_clients, stats.num_users);
  const history: HistoryResult<ChatMessage> = await lobby.history({
    limit: 10,
    reverse: true,
    since: { offset: 0, epoch: "e" },
  });
  for (const pub of history.publications) console.log(pub.offset, pub.data.text, pub.info);
  console.log(history.offset, history.epoch, await lobby.history());

  const found: Subscription | null = client.getSubscription("chat:lobby");
  for (const [channel, sub] of client.subscriptions) console.log(channel, sub.state);
  // @ts-expect-error: the map is the client's (subscribe and unsubscribe change it)
  client.subscriptions.delete("chat:lobby");
  // @ts-expect-error: read-only
  lobby.state = "subscribed";

  const sum = await client.rpc<number>("add", [1, 2]);
  const doubled: number = sum * 2;
  await client.rpc("ping");
  await client.send({ typing: true });
  const direct: PublishResult = await client.publish("chat:lobby", { text: "direct" });
  console.log(found?.channel, doubled, direct);

  lobby.unsubscribe();
  client.unsubscribe("chat:lobby");

  try {
    await client.rpc("fails");
  } catch (error) {
    if (error instanceof PulsewireError) {
      const code: number = error.code; // -1: timeout, 0: connection lost, else the hub's
      console.log(code, error.message);
    }
  }
  const own = new PulsewireError(100, "made here");
  const asError: Error = own;
  console.log(asError.message, own.name);
  client.disconnect();
}

void chat();
