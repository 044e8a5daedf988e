/**
 * pulsewire.js: the browser client of the pulsewire hub (wire protocol v1, JSON).
 * A dependency-free ES module, served by `pulsewire serve` at /pulsewire.js; also the npm
 * package `pulsewire` (package.json beside it), typed by pulsewire.d.ts (keep the two in step:
 * tests/js checks them). Reference: docs/pulsewire-js.md.
 *
 *   import { Client } from "/pulsewire.js";
 *
 *   const client = new Client("ws://host/connection/websocket", {  // or "https://host", or "/"
 *     token: "...",                        // a connection token, or:
 *     getToken: async () => "...",         // called when there is none yet or it expired
 *     transports: ["websocket", "sse", "longpoll"],  // the order to try; ["sse"] forces one
 *     minReconnectDelay: 500, maxReconnectDelay: 20000,  // backoff with full jitter
 *   });
 *   client.on("state", ({ state, reason }) => {});  // "connecting" | "connected" | "disconnected"
 *   client.on("connected", (ctx) => {});     // ctx: { client, user, transport, ... }
 *   client.on("disconnected", ({ code, reason, reconnect }) => {});  // a connection ended
 *   client.on("message", ({ data }) => {});  // what the server API's `send` sent
 *   client.on("error", ({ type, ... }) => {});  // "transport" (falling back), "token", "refresh",
 *                                  // "subscribe" (a server-side subscription failed at connect)
 *   client.connect();
 *
 *   const sub = client.subscribe("chat:lobby", {
 *     onPublication: (pub) => {},   // pub: { channel, data, offset, info, tags }
 *     onSubscribed: (ctx) => {},    // ctx: { channel, recovering, recovered, recoverable, ... }
 *     onJoin, onLeave,              // ({ channel, info })
 *     onUnsubscribed,               // ({ channel, code, reason }): ended (code 0: by the app)
 *     onError,                      // (PulsewireError): subscribing failed for good
 *   });                             // or sub.on("publication", fn), sub.on("subscribed", fn)...
 *   await sub.publish(data); await sub.presence(); await sub.presenceStats();
 *   await sub.history({ limit: 10 });
 *   client.unsubscribe("chat:lobby");      // or sub.unsubscribe()
 *   await client.rpc("method", data); await client.send(data); client.disconnect();
 *
 *   // Server-side subscriptions: channels the server subscribes this connection to (the
 *   // token claim `subs`, /api/subscribe...). They come as the client's own events, each
 *   // with its `channel`; the client keeps their positions and recovers them on reconnect.
 *   client.on("subscribed", (ctx) => {});    // ctx: as onSubscribed's (a new one, or again)
 *   client.on("publication", (pub) => {});   // pub: { channel, data, offset, info, tags }
 *   client.on("join", fn); client.on("leave", fn);  // ({ channel, info })
 *   client.on("unsubscribed", ({ channel, code, reason }) => {});  // ended by the server
 *   client.getServerSubscription("notifications:#42");  // its publish(), presence(),
 *   client.serverSubscriptions;   // history()... (a Map); the client cannot unsubscribe them
 *
 * Calls made while (re)connecting wait for the connection (or the subscription) up to
 * `timeout` ms; calls in flight when a connection is lost are rejected (code 0).
 *
 * Reconnecting: when a connection is lost the client reconnects after a random delay in
 * [0, min(maxReconnectDelay, minReconnectDelay * 2^attempt)], unless the server said not to
 * (disconnect codes 4500-4999, e.g. an invalid token). A `ping` every `pingInterval` ms that
 * gets no reply within `pingTimeout` ms counts as a lost connection.
 *
 * Recovery: for channels with history, the client remembers the offset and epoch of the last
 * publication; after a reconnect it subscribes with `recover: true` from there and the server
 * sends what was missed, then live publications. Each publication reaches `onPublication` once
 * and in order (offsets are de-duplicated). When the missed publications are gone (history
 * trimmed or lost, e.g. a server restart), `onSubscribed` gets `recovering: true` and
 * `recovered: false`: reload the state. The server may also ask to resubscribe (an
 * `unsubscribe` push with `resubscribe: true`): the client does so, recovering. Server-side
 * subscriptions recover the same way: their positions go in `connect`'s `server_subs`, and
 * the server itself makes one again when it must (a `subscribe` push carrying the recovery).
 *
 * Transports: each connection attempt tries the listed transports in order and moves to the
 * next one only when a transport cannot open at all (an error before it opened, or no open
 * within `timeout` ms). SSE and long-polling URLs derive from the same base as the WebSocket
 * URL (/connection/sse, /connection/longpoll/...); `websocketUrl`, `sseUrl` and `longpollUrl`
 * override them. Subscriptions and their positions survive transport switches.
 */

const SUBPROTOCOL = "pulsewire.v1.json";
const PROTOCOL_VERSION = 1;
const MAX_POST_BYTES = 60000; // below the server's default message size limit (64 KiB)

/**
 * @typedef {"connecting" | "connected" | "disconnected"} ClientState
 * @typedef {"unsubscribed" | "subscribing" | "subscribed"} SubscriptionState
 * @typedef {"websocket" | "sse" | "longpoll"} TransportName
 * @typedef {{ id: number, method: string, params: object }} Command
 * @typedef {{ [key: string]: any }} Message  a reply ({id, result | error}) or a push ({push})
 * @typedef {{ code: number, reason: string, reconnect: boolean }} DisconnectInfo
 * @typedef {{ websocket: string, sse: string, longpoll: string }} Endpoints
 * @typedef {{ resolve: Function, reject: Function, timer: any, onResult?: Function }} PendingCall
 *
 * @typedef {object} ClientOptions
 * @property {string} [token] connection token (JWT)
 * @property {() => Promise<string>} [getToken] gets a (fresh) token
 * @property {TransportName[]} [transports] the order to try
 * @property {number} [minReconnectDelay] ms (500)
 * @property {number} [maxReconnectDelay] ms (20000)
 * @property {number} [pingInterval] ms between pings while connected (25000)
 * @property {number} [pingTimeout] ms to wait for a ping reply (10000)
 * @property {number} [timeout] ms for calls and for a transport to open (10000)
 * @property {any} [data] sent with the connect command
 * @property {string} [websocketUrl] overrides the derived WebSocket URL
 * @property {string} [sseUrl] overrides the derived SSE URL
 * @property {string} [longpollUrl] overrides the derived long-polling base URL
 */

const DEFAULTS = {
  /** @type {TransportName[]} */
  transports: ["websocket", "sse", "longpoll"],
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  pingInterval: 25000,
  pingTimeout: 10000,
  timeout: 10000,
};

/** An error reply ({code, message}), a timeout (code -1) or a lost connection (code 0). */
export class PulsewireError extends Error {
  /** @param {number} code @param {string} message */
  constructor(code, message) {
    super(message);
    this.name = "PulsewireError";
    this.code = code;
  }
}

const ERROR_TIMEOUT = -1;
const ERROR_CONNECTION_LOST = 0;
const TEMPORARY_ERRORS = new Set([108, 111]); // not available, too many requests
const TOKEN_EXPIRED_ERROR = 109;
const DISCONNECT_TOKEN_EXPIRED = 4002;
const DISCONNECT_NO_PING = 4005;

/** Disconnect codes 4500-4999 mean "do not reconnect". @param {number} code */
function shouldReconnect(code) {
  return !(code >= 4500 && code <= 4999);
}

// ------------------------------------------------------------------------------- events

/** A minimal event emitter; a failing listener is reported and does not stop the others. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /** @param {string} event @param {Function} listener @returns {() => void} unsubscribes */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  /** @param {string} event @param {Function} listener */
  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  /** @param {string} event @param {any} value */
  emit(event, value) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        console.error(`pulsewire: a "${event}" listener failed`, error);
      }
    }
  }
}

/**
 * Resolves when `emitter`'s "state" event reaches `good`, rejects on `bad` or after `timeout`.
 * @param {Emitter} emitter @param {string} good @param {string} bad @param {number} timeout
 * @returns {Promise<void>}
 */
function waitForState(emitter, good, bad, timeout) {
  return new Promise((resolve, reject) => {
    const finish = (/** @type {() => void} */ settle) => {
      clearTimeout(timer);
      off();
      settle();
    };
    const timer = setTimeout(() => {
      finish(() => reject(new PulsewireError(ERROR_TIMEOUT, `not ${good} in time`)));
    }, timeout);
    const off = emitter.on("state", (/** @type {any} */ { state, reason, error }) => {
      if (state === good) finish(resolve);
      const why = reason ?? `became ${bad}`;
      // The server's error when it refused (e.g. 103 for a subscribe), else connection lost.
      const failure = error ?? new PulsewireError(ERROR_CONNECTION_LOST, why);
      if (state === bad) finish(() => reject(failure));
    });
  });
}

// --------------------------------------------------------------------------------- URLs

/**
 * The endpoint URLs of each transport, from a WebSocket URL or an HTTP base URL.
 * @param {string} url @param {ClientOptions} options @returns {Endpoints}
 */
function endpoints(url, options) {
  const parsed = new URL(url, globalThis.location?.href);
  const http = parsed.protocol.replace(/^ws/, "http"); // "ws:" -> "http:", "wss:" -> "https:"
  const ws = http.replace(/^http/, "ws");
  const path = parsed.pathname.replace(/\/+$/, "").replace(/\/connection\/websocket$/, "");
  const base = `${http}//${parsed.host}${path}`;
  return {
    websocket: options.websocketUrl ?? `${ws}//${parsed.host}${path}/connection/websocket`,
    sse: options.sseUrl ?? `${base}/connection/sse`,
    longpoll: options.longpollUrl ?? `${base}/connection/longpoll`,
  };
}

// ---------------------------------------------------------------------------- transports

/**
 * What a transport reports to the client. After `close()` it reports nothing more; it calls
 * `onClose` at most once, and only if `close()` was not called.
 * @typedef {object} TransportEvents
 * @property {() => void} onOpen
 * @property {(message: Message) => void} onMessage
 * @property {(info: { code: number, reason: string, opened: boolean }) => void} onClose
 */

/** What the three transports share: open/closed bookkeeping and reporting. */
class Transport {
  /** @param {TransportName} name @param {TransportEvents} events */
  constructor(name, events) {
    this.name = name;
    this.events = events;
    this.opened = false;
    this.closed = false;
  }

  /** @param {Command[]} commands */
  send(commands) {}

  _open() {
    if (this.closed) return;
    this.opened = true;
    this.events.onOpen();
  }

  /** Messages of one frame, event or poll, one at a time. @param {Message[]} messages */
  _deliver(messages) {
    for (const message of messages) {
      if (this.closed) return;
      this.events.onMessage(message);
    }
  }

  /** @param {number} code @param {string} reason */
  _end(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this._release();
    this.events.onClose({ code, reason, opened: this.opened });
  }

  /** Stop without reporting. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this._release();
  }

  /** Free resources (subclasses). */
  _release() {}
}

/** The JSON messages of a text frame or event (one per line). @param {string} text */
function parseLines(text) {
  return text
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line));
}

class WebSocketTransport extends Transport {
  /** @param {string} url @param {TransportEvents} events */
  constructor(url, events) {
    super("websocket", events);
    this.ws = new WebSocket(url, SUBPROTOCOL);
    this.ws.onopen = () => this._open();
    this.ws.onmessage = (event) => this._deliver(parseLines(event.data));
    this.ws.onclose = (event) => this._end(event.code, event.reason);
  }

  /** @param {Command[]} commands */
  send(commands) {
    if (!this.closed) this.ws.send(commands.map((c) => JSON.stringify(c)).join("\n"));
  }

  _release() {
    this.ws.onopen = this.ws.onmessage = this.ws.onclose = null;
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }
}

/**
 * Sends commands by POST (JSON lines as text/plain: no CORS preflight), one request at a time
 * so that the server handles them in order; commands queued meanwhile go in the next request.
 */
class CommandSender {
  /** @param {string} url @param {(error: Error) => void} onFailure */
  constructor(url, onFailure) {
    this.url = url;
    this.onFailure = onFailure;
    /** @type {string[]} */
    this.queue = [];
    this.busy = false;
    this.abort = new AbortController();
  }

  /** @param {Command[]} commands */
  send(commands) {
    this.queue.push(...commands.map((c) => JSON.stringify(c)));
    if (!this.busy) this._flush();
  }

  /** The next request's body: queued commands up to MAX_POST_BYTES (at least one). */
  _nextBody() {
    let size = this.queue[0].length;
    let count = 1;
    while (count < this.queue.length && size + this.queue[count].length < MAX_POST_BYTES) {
      size += this.queue[count].length + 1;
      count += 1;
    }
    return this.queue.splice(0, count).join("\n");
  }

  async _flush() {
    this.busy = true;
    try {
      while (this.queue.length) {
        const response = await fetch(this.url, {
          method: "POST",
          headers: { "Content-Type": "text/plain;charset=UTF-8" },
          body: this._nextBody(),
          signal: this.abort.signal,
          cache: "no-store",
        });
        if (!response.ok) throw new Error(`sending commands: HTTP ${response.status}`);
      }
    } catch (error) {
      if (!this.abort.signal.aborted) this.onFailure(/** @type {Error} */ (error));
    } finally {
      this.busy = false;
    }
  }

  stop() {
    this.abort.abort();
    this.queue = [];
  }
}

/** Server-Sent Events down, POSTs up. The stream's first event names the session. */
class SseTransport extends Transport {
  /** @param {string} url @param {TransportEvents} events */
  constructor(url, events) {
    super("sse", events);
    /** @type {CommandSender | null} */
    this.sender = null;
    this.source = new EventSource(url);
    this.source.addEventListener("session", (event) => {
      const { session } = JSON.parse(/** @type {MessageEvent} */ (event).data);
      const sendUrl = `${url}/send?session=${encodeURIComponent(session)}`;
      this.sender = new CommandSender(sendUrl, (error) => this._end(1006, error.message));
      this._open();
    });
    this.source.onmessage = (event) => this._deliver(parseLines(event.data));
    // EventSource would reconnect by itself, to a new session: the client decides instead.
    this.source.onerror = () => this._end(1006, "event stream failed");
  }

  /** @param {Command[]} commands */
  send(commands) {
    if (!this.closed) this.sender?.send(commands);
  }

  _release() {
    this.source.onmessage = this.source.onerror = null;
    this.source.close();
    this.sender?.stop();
  }
}

/** Long-polling: POST /open, then one GET /poll after another; POSTs up. */
class LongPollTransport extends Transport {
  /** @param {string} url @param {TransportEvents} events */
  constructor(url, events) {
    super("longpoll", events);
    this.url = url;
    this.abort = new AbortController();
    /** @type {CommandSender | null} */
    this.sender = null;
    this.query = "";
    this.serverClosed = false;
    this._run();
  }

  /** @param {string} path @param {RequestInit} init */
  async _fetch(path, init = {}) {
    const url = `${this.url}/${path}${this.query}`;
    const response = await fetch(url, { ...init, signal: this.abort.signal, cache: "no-store" });
    if (!response.ok) throw new Error(`long-poll ${path}: HTTP ${response.status}`);
    return response;
  }

  async _run() {
    try {
      const headers = { "Content-Type": "text/plain;charset=UTF-8" };
      const { session } = await (await this._fetch("open", { method: "POST", headers })).json();
      this.query = `?session=${encodeURIComponent(session)}`;
      const sendUrl = `${this.url}/send${this.query}`;
      this.sender = new CommandSender(sendUrl, (error) => this._end(1006, error.message));
      this._open();
      while (!this.closed) {
        /** @type {Message[]} */
        const messages = await (await this._fetch("poll")).json();
        this.serverClosed ||= messages.some((m) => m.push === "disconnect");
        this._deliver(messages);
      }
    } catch (error) {
      this._end(1006, /** @type {Error} */ (error).message ?? String(error));
    }
  }

  /** @param {Command[]} commands */
  send(commands) {
    if (!this.closed) this.sender?.send(commands);
  }

  _release() {
    this.abort.abort();
    this.sender?.stop();
    if (this.query && !this.serverClosed) {
      // Tell the server now rather than letting the session expire (fire and forget).
      const url = `${this.url}/close${this.query}`;
      fetch(url, { method: "POST", keepalive: true }).catch(() => {});
    }
  }
}

/** @type {{ [name: string]: (urls: Endpoints, events: TransportEvents) => Transport }} */
const TRANSPORTS = {
  websocket: (urls, events) => new WebSocketTransport(urls.websocket, events),
  sse: (urls, events) => new SseTransport(urls.sse, events),
  longpoll: (urls, events) => new LongPollTransport(urls.longpoll, events),
};

// -------------------------------------------------------------------------- subscription

/**
 * One channel subscription. It outlives connections: the client resubscribes it (recovering
 * from its last position) after every reconnect, until it is unsubscribed.
 */
export class Subscription {
  /** @param {Client} client @param {string} channel @param {{ [on: string]: Function }} handlers */
  constructor(client, channel, handlers = {}) {
    this.client = client;
    this.channel = channel;
    /** @type {SubscriptionState} */
    this.state = "unsubscribed";
    /** Offset of the last publication seen (channels with history). @type {number | null} */
    this.offset = null;
    /** @type {string | null} */
    this.epoch = null;
    this.recoverable = false;
    /** The connection this subscription was last requested on. @type {Transport | null} */
    this._requestedOn = null;
    this._events = new Emitter();
    for (const [key, listener] of Object.entries(handlers)) {
      if (/^on[A-Z]/.test(key) && typeof listener === "function") {
        this.on(key[2].toLowerCase() + key.slice(3), listener);
      }
    }
  }

  /**
   * Listen to "publication", "subscribed", "unsubscribed", "join", "leave", "error", "state".
   * @param {string} event @param {Function} listener @returns {() => void}
   */
  on(event, listener) {
    return this._events.on(event, listener);
  }

  /** Where this subscription stands in the channel's stream (for recovery). */
  get position() {
    return this.epoch === null ? null : { offset: this.offset ?? 0, epoch: this.epoch };
  }

  /** Resolves once subscribed (rejects after `timeout` ms or if the subscription ends). */
  async ready(timeout = this.client.options.timeout) {
    if (this.state === "unsubscribed") {
      throw new PulsewireError(ERROR_CONNECTION_LOST, `not subscribed to ${this.channel}`);
    }
    if (this.state !== "subscribed") {
      await waitForState(this._events, "subscribed", "unsubscribed", timeout);
    }
    return this;
  }

  /** @param {any} data */
  async publish(data) {
    await this.ready();
    return this.client._call("publish", { channel: this.channel, data });
  }

  async presence() {
    await this.ready();
    return (await this.client._call("presence", { channel: this.channel })).clients;
  }

  async presenceStats() {
    await this.ready();
    return this.client._call("presence_stats", { channel: this.channel });
  }

  /**
   * Publications kept in the channel's history.
   * @param {{ limit?: number, since?: { offset: number, epoch: string }, reverse?: boolean }} [options]
   */
  async history(options = {}) {
    await this.ready();
    return this.client._call("history", { channel: this.channel, ...options });
  }

  unsubscribe() {
    this.client.unsubscribe(this.channel);
  }

  /**
   * @param {SubscriptionState} state @param {string} [reason]
   * @param {PulsewireError} [error] why the server refused the subscription
   */
  _setState(state, reason, error) {
    if (this.state === state) return;
    this.state = state;
    this._events.emit("state", { channel: this.channel, state, reason, error });
  }

  /** The subscribe command's parameters: recover from the last position when there is one. */
  _subscribeParams() {
    const params = { channel: this.channel };
    if (this.recoverable && this.epoch !== null) {
      Object.assign(params, { recover: true, offset: this.offset ?? 0, epoch: this.epoch });
    }
    return params;
  }

  /** @param {any} result the subscribe reply @param {boolean} recovering */
  _subscribed(result, recovering) {
    const recovered = recovering && result.recovered === true;
    this.recoverable = result.recoverable === true;
    if (this.recoverable && !recovered) {
      this.offset = result.offset; // a new starting point: publications before it are state
      this.epoch = result.epoch;
    }
    this._setState("subscribed");
    this._events.emit("subscribed", {
      channel: this.channel,
      recovering,
      recovered,
      recoverable: this.recoverable,
      offset: result.offset,
      epoch: result.epoch,
    });
    for (const publication of result.publications ?? []) this._publication(publication);
    if (recovered) this.offset = Math.max(this.offset ?? 0, result.offset);
  }

  /** Deliver a publication once and in order: offsets at or below the last one are dropped. */
  _publication(/** @type {Message} */ pub) {
    if (typeof pub.offset === "number" && pub.offset > 0) {
      if (this.offset !== null && pub.offset <= this.offset) return;
      this.offset = pub.offset;
    }
    const { data, offset, info, tags } = pub;
    this._events.emit("publication", { channel: this.channel, data, offset, info, tags });
  }

  /** @param {string} event @param {any} value */
  _emit(event, value) {
    this._events.emit(event, value);
  }
}

// --------------------------------------------------------------------------------- client

export class Client {
  /** @param {string} url @param {ClientOptions} [options] */
  constructor(url, options = {}) {
    this.options = { ...DEFAULTS, ...options };
    for (const name of this.options.transports) {
      if (!(name in TRANSPORTS)) throw new Error(`unknown transport ${name}`);
    }
    this.urls = endpoints(url, this.options);
    /** @type {ClientState} */
    this.state = "disconnected";
    /** Name of the transport of the current connection, if any. @type {string | null} */
    this.transport = null;
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    /** Server-side subscriptions (made by the server), by channel. @type {Map<string, Subscription>} */
    this.serverSubscriptions = new Map();
    this._events = new Emitter();
    this._token = options.token ?? null;
    this._needToken = this._token === null;
    /** The current connection (open or opening). @type {Transport | null} */
    this._conn = null;
    this._transportIndex = 0;
    this._attempt = 0; // failed attempts since the last connection
    this._attemptId = 0; // tells a connection attempt that it was overtaken
    this._nextId = 1;
    /** Calls waiting for their reply, by command id. @type {Map<number, PendingCall>} */
    this._pending = new Map();
    /** @type {Command[]} */
    this._outbox = [];
    this._timers = { reconnect: 0, ping: 0, refresh: 0, open: 0 };
  }

  /**
   * Listen to "state", "connected", "disconnected", "message", "error", and for server-side
   * subscriptions "subscribed", "publication", "join", "leave", "unsubscribed".
   * @param {string} event @param {Function} listener @returns {() => void} removes the listener
   */
  on(event, listener) {
    return this._events.on(event, listener);
  }

  /** @param {string} event @param {Function} listener */
  off(event, listener) {
    this._events.off(event, listener);
  }

  /** Connect (and keep reconnecting) until `disconnect()`. */
  connect() {
    if (this.state !== "disconnected") return;
    this._attempt = 0;
    this._setState("connecting", "connect called");
    this._startAttempt();
  }

  /** Close the connection and stop reconnecting; subscriptions are kept for `connect()`. */
  disconnect() {
    if (this.state === "disconnected") return;
    const wasConnected = this.state === "connected";
    this._teardown("client disconnected");
    this._setState("disconnected", "disconnect called");
    if (wasConnected) {
      const info = { code: 1000, reason: "client disconnected", reconnect: false };
      this._events.emit("disconnected", info);
    }
  }

  /** Resolves once connected (rejects after `timeout` ms or when the client gives up). */
  async ready(timeout = this.options.timeout) {
    if (this.state === "disconnected") {
      throw new PulsewireError(ERROR_CONNECTION_LOST, "the client is disconnected");
    }
    if (this.state !== "connected") {
      await waitForState(this._events, "connected", "disconnected", timeout);
    }
    return this;
  }

  /**
   * Subscribe to a channel (see the handlers in the module comment).
   * @param {string} channel @param {{ [on: string]: Function }} [handlers]
   * @returns {Subscription}
   */
  subscribe(channel, handlers = {}) {
    if (this.subscriptions.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, handlers);
    this.subscriptions.set(channel, sub);
    sub._setState("subscribing");
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /** @param {string} channel */
  getSubscription(channel) {
    return this.subscriptions.get(channel) ?? null;
  }

  /** A server-side subscription (the server made it; it ends it). @param {string} channel */
  getServerSubscription(channel) {
    return this.serverSubscriptions.get(channel) ?? null;
  }

  /** @param {string} channel */
  unsubscribe(channel) {
    const sub = this.subscriptions.get(channel);
    if (!sub) return;
    this.subscriptions.delete(channel);
    const requested = sub._requestedOn !== null && sub._requestedOn === this._conn;
    sub._setState("unsubscribed", "unsubscribed by the client");
    sub._emit("unsubscribed", { channel, code: 0, reason: "unsubscribed by the client" });
    if (requested) this._rawCall("unsubscribe", { channel }).catch(() => {});
  }

  /** @param {string} method @param {any} data */
  async rpc(method, data) {
    return (await this._call("rpc", { method, data })).data;
  }

  /** A message to the server's `on_message` hook; resolves once it was taken. @param {any} data */
  async send(data) {
    await this._call("send", { data });
  }

  /** Publish to a channel (the server requires a subscription to it). */
  async publish(/** @type {string} */ channel, /** @type {any} */ data) {
    const sub = this.subscriptions.get(channel);
    if (sub) return sub.publish(data);
    return this._call("publish", { channel, data });
  }

  // -- connection lifecycle ---------------------------------------------------------------

  /** @param {ClientState} state @param {string} reason */
  _setState(state, reason) {
    if (this.state === state) return;
    this.state = state;
    this._events.emit("state", { state, reason });
  }

  async _startAttempt() {
    const attemptId = ++this._attemptId;
    this._transportIndex = 0;
    if (this._needToken && this.options.getToken) {
      try {
        this._token = await this.options.getToken();
        this._needToken = false;
      } catch (error) {
        if (attemptId !== this._attemptId) return;
        this._events.emit("error", { type: "token", error });
        this._scheduleReconnect();
        return;
      }
    }
    if (attemptId === this._attemptId && this.state === "connecting") this._openTransport();
  }

  _openTransport() {
    const name = this.options.transports[this._transportIndex];
    /** @type {Transport} */
    let conn;
    const events = {
      onOpen: () => this._onOpen(conn),
      onMessage: (/** @type {Message} */ message) => this._onMessage(conn, message),
      onClose: (/** @type {any} */ info) => this._onTransportClose(conn, info),
    };
    try {
      conn = TRANSPORTS[name](this.urls, events);
    } catch (error) {
      // e.g. a malformed URL: count it as a transport that could not open
      conn = new Transport(name, events);
      setTimeout(() => conn._end(1006, String(error)), 0);
    }
    this._conn = conn;
    clearTimeout(this._timers.open);
    this._timers.open = setTimeout(() => {
      if (this._conn === conn && !conn.opened) conn._end(1006, `${name} did not open in time`);
    }, this.options.timeout);
  }

  /** The transport is open: send the connect command. @param {Transport} conn */
  _onOpen(conn) {
    if (conn !== this._conn) return;
    clearTimeout(this._timers.open);
    const params = { version: PROTOCOL_VERSION };
    if (this._token !== null) params.token = this._token;
    if (this.options.data !== undefined) params.data = this.options.data;
    const positions = this._serverPositions();
    if (Object.keys(positions).length) params.server_subs = positions;
    const connected = (/** @type {any} */ result) => {
      if (conn === this._conn) this._connected(conn, result, positions);
    };
    this._rawCall("connect", params, this.options.timeout, connected).catch((error) => {
      if (conn !== this._conn) return; // the connection is gone already: handled there
      if (error.code === TOKEN_EXPIRED_ERROR) this._needToken = true;
      this._lost({ code: 1011, reason: `connect failed: ${error.message}`, reconnect: true });
    });
  }

  /**
   * @param {Transport} conn @param {any} result the connect reply
   * @param {{ [channel: string]: object }} positions the server_subs sent
   */
  _connected(conn, result, positions) {
    this._attempt = 0;
    this.transport = conn.name;
    this._serverSubsConnected(result.server_subs ?? {}, positions);
    // Resubscribe before telling the app, whose listeners may subscribe too.
    for (const sub of this.subscriptions.values()) this._sendSubscribe(sub);
    this._schedulePing();
    this._scheduleRefresh(result);
    this._setState("connected", `connected over ${conn.name}`);
    this._events.emit("connected", { ...result, transport: conn.name });
  }

  /** @param {Transport} conn @param {{ code: number, reason: string, opened: boolean }} info */
  _onTransportClose(conn, { code, reason, opened }) {
    if (conn !== this._conn) return;
    clearTimeout(this._timers.open);
    const next = this._transportIndex + 1;
    if (!opened && next < this.options.transports.length) {
      this._events.emit("error", { type: "transport", transport: conn.name, reason });
      this._transportIndex = next;
      this._openTransport();
      return;
    }
    this._lost({ code, reason, reconnect: shouldReconnect(code) });
  }

  /** The connection ended: tell the app, then reconnect or give up. @param {DisconnectInfo} info */
  _lost({ code, reason, reconnect }) {
    const wasConnected = this.state === "connected";
    this._teardown(reason);
    if (code === DISCONNECT_TOKEN_EXPIRED) this._needToken = true;
    if (wasConnected || !reconnect) this._events.emit("disconnected", { code, reason, reconnect });
    if (reconnect) {
      this._setState("connecting", reason);
      this._scheduleReconnect();
    } else {
      this._setState("disconnected", reason);
    }
  }

  /** Close the transport, stop timers, fail calls in flight; subscriptions wait to resubscribe. */
  _teardown(/** @type {string} */ reason) {
    const conn = this._conn;
    this._conn = null;
    this._attemptId += 1;
    this.transport = null;
    conn?.close();
    for (const timer of Object.values(this._timers)) clearTimeout(timer);
    this._outbox = [];
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const call of pending) {
      clearTimeout(call.timer);
      call.reject(new PulsewireError(ERROR_CONNECTION_LOST, `connection lost: ${reason}`));
    }
    for (const sub of this.subscriptions.values()) sub._setState("subscribing", reason);
    for (const sub of this.serverSubscriptions.values()) sub._setState("subscribing", reason);
  }

  _scheduleReconnect() {
    const { minReconnectDelay, maxReconnectDelay } = this.options;
    const ceiling = Math.min(maxReconnectDelay, minReconnectDelay * 2 ** this._attempt);
    const delay = Math.random() * ceiling; // "full jitter"
    this._attempt += 1;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => {
      if (this.state === "connecting" && this._conn === null) this._startAttempt();
    }, delay);
  }

  /** A ping every `pingInterval`; no reply within `pingTimeout` means the connection is dead. */
  _schedulePing() {
    clearTimeout(this._timers.ping);
    const conn = this._conn;
    this._timers.ping = setTimeout(() => {
      this._rawCall("ping", {}, this.options.pingTimeout).then(
        () => conn === this._conn && this._schedulePing(),
        (error) => {
          if (conn !== this._conn || error.code !== ERROR_TIMEOUT) return;
          this._lost({ code: DISCONNECT_NO_PING, reason: "no reply to ping", reconnect: true });
        },
      );
    }, this.options.pingInterval);
  }

  /** Refresh an expiring token shortly before it expires (when `getToken` is given). */
  _scheduleRefresh(/** @type {any} */ result) {
    clearTimeout(this._timers.refresh);
    if (!result.expires || !this.options.getToken || typeof result.ttl !== "number") return;
    const conn = this._conn;
    this._timers.refresh = setTimeout(async () => {
      try {
        const token = await this.options.getToken();
        if (conn !== this._conn) return;
        this._token = token;
        this._scheduleRefresh(await this._rawCall("refresh", { token }));
      } catch (error) {
        this._events.emit("error", { type: "refresh", error }); // expiry will reconnect
      }
    }, Math.max(1, result.ttl * 0.9) * 1000);
  }

  // -- commands -------------------------------------------------------------------------------

  /** A command once connected (waits for the connection up to `timeout`). */
  async _call(/** @type {string} */ method, /** @type {object} */ params) {
    await this.ready();
    return this._rawCall(method, params);
  }

  /**
   * Send a command on the current connection; resolves with its result. `onResult` runs as
   * soon as the reply is read, before any message after it: replies that change how later
   * messages are handled (connect, subscribe) take effect in order, not a microtask later.
   * @param {string} method @param {object} params @param {number} [timeout]
   * @param {(result: any) => void} [onResult]
   * @returns {Promise<any>}
   */
  _rawCall(method, params, timeout = this.options.timeout, onResult = undefined) {
    if (this._conn === null) {
      return Promise.reject(new PulsewireError(ERROR_CONNECTION_LOST, "not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new PulsewireError(ERROR_TIMEOUT, `${method} timed out`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, onResult });
      this._enqueue({ id, method, params });
    });
  }

  /** Commands issued in the same tick go out together (one frame or request). */
  _enqueue(/** @type {Command} */ command) {
    this._outbox.push(command);
    if (this._outbox.length > 1) return;
    queueMicrotask(() => {
      const commands = this._outbox.splice(0); // emptied by _teardown if the connection ended
      if (commands.length) this._conn?.send(commands);
    });
  }

  /** @param {Subscription} sub */
  _sendSubscribe(sub) {
    if (sub._requestedOn === this._conn) return; // already asked on this connection
    sub._requestedOn = this._conn;
    const params = sub._subscribeParams();
    const recovering = params.recover === true;
    const subscribed = (/** @type {any} */ result) => {
      if (this.subscriptions.get(sub.channel) === sub) sub._subscribed(result, recovering);
    };
    this._rawCall("subscribe", params, this.options.timeout, subscribed).catch((error) =>
      this._subscribeFailed(sub, error),
    );
  }

  /** @param {Subscription} sub @param {PulsewireError} error */
  _subscribeFailed(sub, error) {
    if (this.subscriptions.get(sub.channel) !== sub) return;
    if (error.code === ERROR_CONNECTION_LOST) return; // resubscribes after reconnecting
    if (TEMPORARY_ERRORS.has(error.code) || error.code === ERROR_TIMEOUT) {
      const conn = this._conn;
      const retry = () => {
        if (conn !== this._conn || this.subscriptions.get(sub.channel) !== sub) return;
        sub._requestedOn = null;
        this._sendSubscribe(sub);
      };
      setTimeout(retry, this.options.minReconnectDelay * (1 + Math.random()));
      return;
    }
    this.subscriptions.delete(sub.channel);
    sub._setState("unsubscribed", error.message, error);
    sub._emit("error", error);
  }

  // -- incoming messages ----------------------------------------------------------------------

  /** @param {Transport} conn @param {Message} message */
  _onMessage(conn, message) {
    if (conn !== this._conn) return;
    if (message.id !== undefined) {
      this._onReply(message);
    } else if (message.push) {
      this._onPush(message);
    }
  }

  /** @param {Message} reply */
  _onReply(reply) {
    const call = this._pending.get(reply.id);
    if (!call) return;
    this._pending.delete(reply.id);
    clearTimeout(call.timer);
    if (reply.error) {
      call.reject(new PulsewireError(reply.error.code, reply.error.message));
      return;
    }
    const result = reply.result ?? {};
    try {
      call.onResult?.(result);
    } catch (error) {
      console.error("pulsewire: handling a reply failed", error);
    }
    call.resolve(result);
  }

  /** @param {Message} push */
  _onPush(push) {
    const channel = push.channel;
    const server = channel === undefined ? undefined : this.serverSubscriptions.get(channel);
    const sub = server ?? (channel === undefined ? undefined : this.subscriptions.get(channel));
    switch (push.push) {
      case "subscribe": // a server-side subscription, new or made again (then recovering)
        if (typeof channel === "string") {
          this._serverSubscribed(channel, push, push.recovered !== undefined);
        }
        break;
      case "publication":
        sub?._publication(push);
        break;
      case "join":
      case "leave":
        sub?._emit(push.push, { channel: push.channel, info: push.info });
        break;
      case "unsubscribe":
        if (server) this._serverUnsubscribed(channel, push.code, push.reason);
        else if (sub) this._onUnsubscribePush(sub, push);
        break;
      case "message":
        this._events.emit("message", { data: push.data });
        break;
      case "disconnect": {
        const reconnect = push.reconnect !== false && shouldReconnect(push.code);
        this._lost({ code: push.code, reason: push.reason, reconnect });
        break;
      }
    }
  }

  /** The server removed a subscription; `resubscribe: true` asks to come back (and recover). */
  _onUnsubscribePush(/** @type {Subscription} */ sub, /** @type {Message} */ push) {
    if (push.resubscribe) {
      sub._setState("subscribing", push.reason);
      sub._requestedOn = null;
      this._sendSubscribe(sub);
      return;
    }
    this.subscriptions.delete(sub.channel);
    sub._setState("unsubscribed", push.reason);
    sub._emit("unsubscribed", { channel: sub.channel, code: push.code, reason: push.reason });
  }

  // -- server-side subscriptions --------------------------------------------------------------

  /** `connect`'s `server_subs` param: where each recoverable one stands. */
  _serverPositions() {
    /** @type {{ [channel: string]: object }} */
    const positions = {};
    for (const [channel, sub] of this.serverSubscriptions) {
      const { recover, offset, epoch } = /** @type {any} */ (sub._subscribeParams());
      if (recover) positions[channel] = { recover, offset, epoch };
    }
    return positions;
  }

  /**
   * A new connection's server-side subscriptions: the ones made again (recovering from the
   * positions sent), new ones, and the ones the server did not make again (dropped).
   * @param {{ [channel: string]: any }} results @param {{ [channel: string]: object }} positions
   */
  _serverSubsConnected(results, positions) {
    for (const channel of [...this.serverSubscriptions.keys()]) {
      if (!results[channel] || results[channel].error) {
        this._serverUnsubscribed(channel, 2000, "not subscribed again at connect");
      }
    }
    for (const [channel, result] of Object.entries(results)) {
      if (result.error) {
        const error = new PulsewireError(result.error.code, result.error.message);
        this._events.emit("error", { type: "subscribe", channel, error });
      } else {
        this._serverSubscribed(channel, result, channel in positions);
      }
    }
  }

  /** @param {string} channel @param {any} result @param {boolean} recovering */
  _serverSubscribed(channel, result, recovering) {
    let sub = this.serverSubscriptions.get(channel);
    if (!sub) {
      const forward = (/** @type {string} */ event) => (/** @type {any} */ value) =>
        this._events.emit(event, value);
      sub = new Subscription(this, channel, {
        onSubscribed: forward("subscribed"),
        onPublication: forward("publication"),
        onJoin: forward("join"),
        onLeave: forward("leave"),
      });
      this.serverSubscriptions.set(channel, sub);
    }
    sub._subscribed(result, recovering);
  }

  /** @param {string} channel @param {number} code @param {string} reason */
  _serverUnsubscribed(channel, code, reason) {
    const sub = this.serverSubscriptions.get(channel);
    if (!sub) return;
    this.serverSubscriptions.delete(channel);
    sub._setState("unsubscribed", reason);
    this._events.emit("unsubscribed", { channel, code, reason });
  }
}
