/**
 * Chat demo: rooms, presence, a typing indicator and history.
 *
 * Channels: `chat:<room>` (presence, join/leave, history 100) carries messages
 * `{ text, ts }`; `typing:<room>` (no history) carries `{ typing: true | false }` while
 * someone types. Messages published by a backend through the HTTP API have no client
 * info: they may name their author with `user`.
 *
 * Query: ?room=NAME (default lobby), ?user=NAME, ?transport=websocket|sse|longpoll.
 */

import { askName, createClient, el, formatTime, params, showConnectionState } from "../common.js";

const ROOMS = ["lobby", "random", "python"];
const ROOM_PATTERN = /^[A-Za-z0-9_\-]{1,40}$/;
const HISTORY_LIMIT = 50; // messages shown on joining a room
const TYPING_SEND_EVERY = 1000; // ms between two "typing" publications while typing
const TYPING_TTL = 3000; // ms a "typing" publication shows for

/** This page's client id on the current connection (to ignore our own typing). */
let myClientId = "";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @typedef {{ data: any, offset?: number, info?: { client: string, user: string } }} Pub */

// ------------------------------------------------------------------------------ messages

const messages = $("messages");

function clearMessages() {
  messages.replaceChildren();
}

/** Who wrote a message: the publishing client's user, else `data.user` (HTTP API). */
function author(/** @type {Pub} */ pub) {
  return pub.info?.user ?? (typeof pub.data?.user === "string" ? pub.data.user : "server");
}

/**
 * Show a message once, in offset order (history and live publications may overlap).
 * @param {Pub} pub @param {string} me
 */
function showMessage(pub, me) {
  const offset = pub.offset ?? 0;
  if (offset && messages.querySelector(`[data-offset="${offset}"]`)) return;
  const text = typeof pub.data?.text === "string" ? pub.data.text : JSON.stringify(pub.data);
  const when = typeof pub.data?.ts === "number" ? pub.data.ts : Date.now();
  const who = author(pub);
  const item = el(
    "li",
    { className: who === me ? "msg mine" : "msg" },
    el("span", { className: "who", textContent: who }),
    el("time", { textContent: formatTime(when) }),
    el("p", { className: "text", textContent: text }),
  );
  item.dataset.offset = String(offset);
  const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 60;
  const later = [...messages.children].find(
    (li) => offset && Number(/** @type {HTMLElement} */ (li).dataset.offset) > offset,
  );
  messages.insertBefore(item, later ?? null);
  if (atBottom || who === me) messages.scrollTop = messages.scrollHeight;
}

// ------------------------------------------------------------------------------ presence

/** Who is in the room: client id -> user name. */
const present = new Map();

function renderPresence(/** @type {string} */ me) {
  const counts = new Map();
  for (const user of present.values()) counts.set(user, (counts.get(user) ?? 0) + 1);
  const items = [...counts.keys()].sort().map((user) => {
    const tabs = counts.get(user) > 1 ? ` ×${counts.get(user)}` : "";
    const you = user === me ? el("span", { className: "you", textContent: "(you)" }) : "";
    return el("li", {}, el("span", { className: "name", textContent: user + tabs }), you);
  });
  $("presence").replaceChildren(...items);
  $("presence-count").textContent = String(counts.size);
}

// -------------------------------------------------------------------------------- typing

/** Who is typing: user name -> timer that forgets them. */
const typers = new Map();

function renderTyping() {
  const names = [...typers.keys()].sort();
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names.length} people are typing…`;
  $("typing").textContent = text;
}

function setTyping(/** @type {string} */ user, /** @type {boolean} */ typing) {
  clearTimeout(typers.get(user));
  typers.delete(user);
  if (typing) typers.set(user, setTimeout(() => setTyping(user, false), TYPING_TTL));
  renderTyping();
}

// ---------------------------------------------------------------------------------- room

/** One joined room: its two subscriptions and what they show. */
class Room {
  /** @param {import("/pulsewire.js").Client} client @param {string} name @param {string} me */
  constructor(client, name, me) {
    this.client = client;
    this.name = name;
    this.me = me;
    this.lastTypingSent = 0;
    this.chat = client.subscribe(`chat:${name}`, {
      onSubscribed: (/** @type {any} */ ctx) => this.onSubscribed(ctx),
      onPublication: (/** @type {Pub} */ pub) => this.onMessage(pub),
      onJoin: ({ info }) => this.onPresence(info, true),
      onLeave: ({ info }) => this.onPresence(info, false),
      onError: (/** @type {Error} */ error) => showError(`cannot join: ${error.message}`),
    });
    this.typing = client.subscribe(`typing:${name}`, {
      onPublication: (/** @type {Pub} */ pub) => this.onTyping(pub),
    });
  }

  leave() {
    this.chat.unsubscribe();
    this.typing.unsubscribe();
    clearMessages();
    present.clear();
    for (const user of [...typers.keys()]) setTyping(user, false);
    renderPresence(this.me);
  }

  /**
   * (Re)subscribed. After a reconnect with everything recovered, the missed messages arrive
   * as publications; otherwise show the latest ones from history (and drop what is shown if
   * the stream changed, e.g. the server restarted).
   */
  async onSubscribed({ recovering, recovered }) {
    this.refreshPresence();
    if (recovering && recovered) return;
    if (recovering) clearMessages();
    try {
      const { publications } = await this.chat.history({ limit: HISTORY_LIMIT, reverse: true });
      for (const pub of publications.reverse()) showMessage(pub, this.me);
    } catch (error) {
      showError(`history: ${/** @type {Error} */ (error).message}`);
    }
  }

  onMessage(/** @type {Pub} */ pub) {
    showMessage(pub, this.me);
    setTyping(author(pub), false);
  }

  async refreshPresence() {
    try {
      const clients = await this.chat.presence();
      present.clear();
      for (const [id, info] of Object.entries(clients)) present.set(id, info.user);
      renderPresence(this.me);
    } catch (error) {
      // lost the connection meanwhile: the next subscribe refreshes it again
    }
  }

  onPresence(/** @type {{ client: string, user: string }} */ info, /** @type {boolean} */ here) {
    if (here) present.set(info.client, info.user);
    else present.delete(info.client);
    renderPresence(this.me);
  }

  onTyping(/** @type {Pub} */ pub) {
    if (!pub.info || pub.info.client === myClientId) return;
    setTyping(pub.info.user, pub.data?.typing === true);
  }

  /** Called on each keystroke: tell the others, at most once a second. */
  typed() {
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_SEND_EVERY) return;
    this.lastTypingSent = now;
    this.typing.publish({ typing: true }).catch(() => {});
  }

  /** @param {string} text */
  async send(text) {
    this.lastTypingSent = 0;
    this.typing.publish({ typing: false }).catch(() => {});
    await this.chat.publish({ text, ts: Date.now() });
  }
}

// ------------------------------------------------------------------------------- the page

function showError(/** @type {string} */ text) {
  const error = $("send-error");
  error.textContent = text;
  error.hidden = !text;
}

/** The rooms list, with links that switch rooms in place. */
function renderRooms(/** @type {string} */ current, /** @type {(room: string) => void} */ go) {
  const names = ROOMS.includes(current) ? ROOMS : [...ROOMS, current];
  const items = names.map((name) => {
    const link = el("a", { href: `?room=${name}`, textContent: `#${name}` });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      go(name);
    });
    return el("li", { className: name === current ? "current" : "" }, link);
  });
  $("rooms").replaceChildren(...items);
}

async function main() {
  const me = await askName("to chat");
  const client = createClient(me);
  showConnectionState(client, $("connection"));
  $("me").textContent = me;
  /** @type {Room | null} */
  let room = null;

  const go = (/** @type {string} */ name) => {
    if (room?.name === name) return;
    room?.leave();
    room = new Room(client, name, me);
    $("room-name").textContent = `#${name}`;
    document.title = `#${name} · Chat · pulsewire demo`;
    const url = new URL(location.href);
    url.searchParams.set("room", name);
    history.replaceState(null, "", url);
    renderRooms(name, go);
    window.demo.room = room;
  };

  client.on("connected", (/** @type {any} */ ctx) => {
    myClientId = ctx.client;
  });

  $("compose").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($("text"));
    const text = input.value.trim();
    if (!text || !room) return;
    input.value = "";
    try {
      await room.send(text);
      showError("");
    } catch (error) {
      input.value = text; // not sent: give it back
      showError(`not sent: ${/** @type {Error} */ (error).message}`);
    }
  });
  $("text").addEventListener("input", () => room?.typed());
  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($("room-input"));
    if (ROOM_PATTERN.test(input.value)) go(input.value);
    input.value = "";
  });

  window.demo = { client, room: null };
  const wanted = params.get("room") ?? "lobby";
  go(ROOM_PATTERN.test(wanted) ? wanted : "lobby");
  client.connect();
  $("text").focus();
}

main();
