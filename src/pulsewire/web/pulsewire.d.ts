/**
 * TypeScript declarations of pulsewire.js, the browser client of the pulsewire hub (wire
 * protocol v1, JSON). Reference: docs/pulsewire-js.md; the protocol: docs/protocol.md.
 *
 * Checked by `tsc --strict` against tests/js/example.ts, and against the module itself
 * (tests/js/check_members.mjs: every public class member declared here exists, and the
 * other way round).
 */

/** Where a client stands: it keeps reconnecting while "connecting". */
export type ClientState = "connecting" | "connected" | "disconnected";

/** Where a subscription stands: it is "subscribing" again after every lost connection. */
export type SubscriptionState = "unsubscribed" | "subscribing" | "subscribed";

/** The transports, tried in the order of `ClientOptions.transports`. */
export type TransportName = "websocket" | "sse" | "longpoll";

/** Options of `new Client(url, options)`; times are in milliseconds. */
export interface ClientOptions {
  /** The connection token (a JWT). */
  token?: string;
  /** Gets a (fresh) token: called when there is none yet, when it expired, and shortly
   *  before an expiring one runs out (to refresh the connection without reconnecting). */
  getToken?: () => string | Promise<string>;
  /** The transports to try, in order (default `["websocket", "sse", "longpoll"]`). */
  transports?: TransportName[];
  /** The first reconnect delay's ceiling (default 500). */
  minReconnectDelay?: number;
  /** The largest reconnect delay (default 20000). */
  maxReconnectDelay?: number;
  /** Time between pings while connected (default 25000). */
  pingInterval?: number;
  /** A ping without a reply within this time means a lost connection (default 10000). */
  pingTimeout?: number;
  /** Time allowed for a call, and for a transport to open (default 10000). */
  timeout?: number;
  /** Sent with the `connect` command (to the server's `authenticate` hook). */
  data?: unknown;
  /** Overrides the WebSocket URL derived from the client's URL. */
  websocketUrl?: string;
  /** Overrides the SSE URL derived from the client's URL. */
  sseUrl?: string;
  /** Overrides the long-polling base URL derived from the client's URL. */
  longpollUrl?: string;
}

/** The options in effect: the defaults, then what was given. */
export type ResolvedClientOptions = ClientOptions &
  Required<
    Pick<
      ClientOptions,
      | "transports"
      | "minReconnectDelay"
      | "maxReconnectDelay"
      | "pingInterval"
      | "pingTimeout"
      | "timeout"
    >
  >;

/** The URL of each transport's endpoint. */
export interface Endpoints {
  websocket: string;
  sse: string;
  longpoll: string;
}

/** A connection as others see it (presence, join and leave, publications by clients). */
export interface ClientInfo {
  /** The connection's id. */
  client: string;
  /** The user id ("" for anonymous connections). */
  user: string;
  /** The connection token's `info` claim. */
  conn_info?: unknown;
  /** The subscription token's `info` claim, or what the `on_subscribe` hook returned. */
  chan_info?: unknown;
}

/** The `connect` reply, with the transport it came over (the "connected" event). */
export interface ConnectedContext {
  /** This connection's id. */
  client: string;
  /** The user id ("" when anonymous). */
  user: string;
  /** The protocol version (1). */
  version: number;
  /** The name of the hub node. */
  node: string;
  transport: TransportName;
  /** Whether the credentials expire (refreshed through `getToken` when given). */
  expires?: boolean;
  /** Whole seconds until they do. */
  ttl?: number;
  /** The subscribe results of the server-side subscriptions made at connect, by channel
   *  (each also reported by the client's events: "subscribed", or "error"). */
  server_subs?: Record<string, object>;
}

/** How a connection ended (the "disconnected" event). */
export interface DisconnectInfo {
  /** A WebSocket close code or a hub disconnect code (docs/protocol.md). */
  code: number;
  reason: string;
  /** Whether the client reconnects (false for codes 4500-4999 and `disconnect()`). */
  reconnect: boolean;
}

/** The client's "state" event. */
export interface ClientStateEvent {
  state: ClientState;
  reason: string;
}

/** A message the server sent to this connection or its user (the "message" event). */
export interface ServerMessage {
  data: unknown;
}

/**
 * The client's "error" event: a transport that could not open (the next one is tried),
 * `getToken` failing, a token refresh failing (the connection ends when it expires), or a
 * server-side subscription that failed at connect.
 */
export type ClientErrorEvent =
  | { type: "transport"; transport: TransportName; reason: string }
  | { type: "token"; error: unknown }
  | { type: "refresh"; error: unknown }
  | { type: "subscribe"; channel: string; error: PulsewireError };

/**
 * The client's events and what their listeners get. "subscribed", "publication", "join",
 * "leave" and "unsubscribed" are those of the server-side subscriptions (the ones the server
 * made: token claim `subs`, /api/subscribe), each with its `channel`.
 */
export interface ClientEvents {
  state: ClientStateEvent;
  connected: ConnectedContext;
  disconnected: DisconnectInfo;
  message: ServerMessage;
  error: ClientErrorEvent;
  subscribed: SubscribedContext;
  publication: Publication;
  join: JoinLeaveContext;
  leave: JoinLeaveContext;
  /** A server-side subscription ended (by the server, or not made again at a reconnect). */
  unsubscribed: UnsubscribedContext;
}

/** A publication delivered to a subscription: once each, in offset order. */
export interface Publication<T = unknown> {
  channel: string;
  data: T;
  /** Its position in the channel's stream (channels with history). */
  offset?: number;
  /** Who published it, when a client did. */
  info?: ClientInfo;
  /** Tags given by the server API's publish. */
  tags?: Record<string, string>;
}

/** The "subscribed" event: after every successful (re)subscribe. */
export interface SubscribedContext {
  channel: string;
  /** Whether this subscribe tried to recover missed publications. */
  recovering: boolean;
  /** Whether every missed publication was recovered; `recovering && !recovered`: the
   *  missed ones are gone, reload the state. */
  recovered: boolean;
  /** Whether the channel keeps history (positions, recovery). */
  recoverable: boolean;
  /** The stream's position (channels with history). */
  offset?: number;
  epoch?: string;
}

/** The "unsubscribed" event: the subscription ended (code 0: by the application). */
export interface UnsubscribedContext {
  channel: string;
  code: number;
  reason: string;
}

/** The "join" and "leave" events (channels with `join_leave`). */
export interface JoinLeaveContext {
  channel: string;
  info: ClientInfo;
}

/** A subscription's "state" event. */
export interface SubscriptionStateEvent {
  channel: string;
  state: SubscriptionState;
  reason?: string;
  /** Set when the server refused the subscription ("unsubscribed"): its code and message. */
  error?: PulsewireError;
}

/** A subscription's events and what their listeners get. */
export interface SubscriptionEvents<T = unknown> {
  publication: Publication<T>;
  subscribed: SubscribedContext;
  unsubscribed: UnsubscribedContext;
  join: JoinLeaveContext;
  leave: JoinLeaveContext;
  /** Subscribing failed for good (e.g. 103: not allowed); the subscription is removed. */
  error: PulsewireError;
  state: SubscriptionStateEvent;
}

/** Listeners given to `client.subscribe(channel, handlers)`: `onX` listens to "x". */
export interface SubscriptionHandlers<T = unknown> {
  onPublication?: (publication: Publication<T>) => void;
  onSubscribed?: (context: SubscribedContext) => void;
  onUnsubscribed?: (context: UnsubscribedContext) => void;
  onJoin?: (context: JoinLeaveContext) => void;
  onLeave?: (context: JoinLeaveContext) => void;
  onError?: (error: PulsewireError) => void;
  onState?: (event: SubscriptionStateEvent) => void;
}

/** Where a subscription stands in its channel's stream. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** The `publish` reply: the publication's position in channels with history, else `{}`. */
export interface PublishResult {
  offset?: number;
  epoch?: string;
}

/** The `presence_stats` reply. */
export interface PresenceStats {
  num_clients: number;
  num_users: number;
}

/** Options of `subscription.history()`. */
export interface HistoryOptions {
  /** At most this many publications (0: only the position). */
  limit?: number;
  /** Only publications after this position (its epoch is not checked: compare yours with
   *  the result's). */
  since?: StreamPosition;
  /** Newest first. */
  reverse?: boolean;
}

/** A publication kept in a channel's history. */
export interface HistoryPublication<T = unknown> {
  data: T;
  offset: number;
  info?: ClientInfo;
  tags?: Record<string, string>;
}

/** The `history` reply. */
export interface HistoryResult<T = unknown> {
  publications: HistoryPublication<T>[];
  /** The stream's current position. */
  offset: number;
  epoch: string;
}

/** Removes the listener it was returned for. */
export type Unlisten = () => void;

/**
 * An error reply (its `code` is the hub's error code, docs/protocol.md), a timeout (code -1)
 * or a lost connection (code 0).
 */
export class PulsewireError extends Error {
  constructor(code: number, message: string);
  readonly name: "PulsewireError";
  code: number;
}

/**
 * A channel subscription, made by `client.subscribe()`. It outlives connections: the client
 * subscribes it again after every reconnect, recovering from its last position, until it
 * is unsubscribed.
 */
export class Subscription<T = unknown> {
  /** Use `client.subscribe(channel, handlers)` rather than this. */
  constructor(client: Client, channel: string, handlers?: SubscriptionHandlers<T>);
  readonly client: Client;
  readonly channel: string;
  readonly state: SubscriptionState;
  /** The offset of the last publication seen (channels with history), else null. */
  readonly offset: number | null;
  /** The channel stream's epoch (channels with history), else null. */
  readonly epoch: string | null;
  /** Whether the channel keeps history (the subscription recovers after reconnects). */
  readonly recoverable: boolean;
  /** Where this subscription stands in the channel's stream (null: no history). */
  readonly position: StreamPosition | null;
  /** Listens to one of the subscription's events; returns the function that stops it. */
  on<E extends keyof SubscriptionEvents<T>>(
    event: E,
    listener: (value: SubscriptionEvents<T>[E]) => void,
  ): Unlisten;
  /** Resolves once subscribed; rejects after `timeout` ms or when the subscription ends. */
  ready(timeout?: number): Promise<this>;
  /** Publishes to the channel (once subscribed; the namespace must allow it). */
  publish(data: T): Promise<PublishResult>;
  /** Who is subscribed, by connection id (channels with presence). */
  presence(): Promise<Record<string, ClientInfo>>;
  /** How many connections and users are subscribed (channels with presence). */
  presenceStats(): Promise<PresenceStats>;
  /** The publications kept in the channel's history. */
  history(options?: HistoryOptions): Promise<HistoryResult<T>>;
  /** Ends the subscription (as `client.unsubscribe(channel)`). */
  unsubscribe(): void;
}

/**
 * A connection to a pulsewire hub that reconnects (with backoff) until `disconnect()`, over
 * WebSocket, Server-Sent Events or long-polling.
 *
 * `url`: the WebSocket URL (`ws://host/connection/websocket`), or the hub's HTTP base URL
 * (`https://host`, or `/` relative to the page); the transports' URLs derive from it.
 */
export class Client {
  constructor(url: string | URL, options?: ClientOptions);
  /** The options in effect. */
  readonly options: ResolvedClientOptions;
  /** The endpoints of the transports. */
  readonly urls: Endpoints;
  readonly state: ClientState;
  /** The transport of the current connection, if connected. */
  readonly transport: TransportName | null;
  /** The subscriptions made with `subscribe()`, by channel. */
  readonly subscriptions: ReadonlyMap<string, Subscription>;
  /** The server-side subscriptions (the server makes and ends them), by channel. */
  readonly serverSubscriptions: ReadonlyMap<string, Subscription>;
  /** Listens to one of the client's events; returns the function that stops it. */
  on<E extends keyof ClientEvents>(event: E, listener: (value: ClientEvents[E]) => void): Unlisten;
  /** Stops a listener given to `on`. */
  off<E extends keyof ClientEvents>(event: E, listener: (value: ClientEvents[E]) => void): void;
  /** Connects, and keeps reconnecting until `disconnect()`. */
  connect(): void;
  /** Closes the connection and stops reconnecting; subscriptions are kept for `connect()`. */
  disconnect(): void;
  /** Resolves once connected; rejects after `timeout` ms or when the client gives up. */
  ready(timeout?: number): Promise<this>;
  /** Subscribes to a channel (throws if already subscribed to it). */
  subscribe<T = unknown>(channel: string, handlers?: SubscriptionHandlers<T>): Subscription<T>;
  /** The subscription to `channel` made with `subscribe()`, or null. */
  getSubscription(channel: string): Subscription | null;
  /** The server-side subscription to `channel`, or null: its `publish()`, `presence()`,
   *  `history()`... work as a subscription's; the client cannot unsubscribe it. */
  getServerSubscription(channel: string): Subscription | null;
  /** Ends the subscription to `channel` (nothing if there is none). */
  unsubscribe(channel: string): void;
  /** Calls the server's `on_rpc` hook; resolves with the data it returned. */
  rpc<R = unknown>(method: string, data?: unknown): Promise<R>;
  /** Sends data to the server's `on_message` hook; resolves once it was taken. */
  send(data: unknown): Promise<void>;
  /** Publishes to a channel (the server requires a subscription to it). */
  publish(channel: string, data: unknown): Promise<PublishResult>;
}
