/**
 * Collaborative notes demo: one shared text, edited by several people at once, merged by a
 * CRDT (Yjs here, vendored in ./vendor/yjs.mjs; pycrdt on the server, pulsewire/demos/notes.py).
 *
 * - Local edits become Yjs updates, published (base64) to `notes:<doc>` as `{ update }`.
 * - Updates from the others arrive as publications and are applied; order and duplicates
 *   do not matter.
 * - On every (re)subscription the page asks the server for the whole document
 *   (`rpc("notes.state")`), applies it, and sends back what the server lacks (edits made
 *   while offline, or whose publication failed).
 *
 * Query: ?doc=NAME (default welcome), ?user=NAME, ?transport=websocket|sse|longpoll.
 */

import * as Y from "./vendor/yjs.mjs";
import { askName, createClient, el, params, showConnectionState } from "../common.js";

const DOC_PATTERN = /^[A-Za-z0-9_\-]{1,40}$/;
const LOCAL = "local"; // transaction origin of the textarea's edits
const REMOTE = "remote"; // transaction origin of updates from the channel or the server
const BATCH_MS = 40; // local updates within this time go out as one publication

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

// -------------------------------------------------------------------------------- base64

/** @param {Uint8Array} bytes @returns {string} */
function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** @param {string} text @returns {Uint8Array} */
function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

// ------------------------------------------------------------------- textarea <-> Y.Text

/**
 * The single edit that turns `before` into `after`, the text after the cursor being
 * unchanged (so that typing "a" in "a|a" inserts at the cursor, not elsewhere).
 * @param {string} before @param {string} after @param {number} cursor after the edit
 */
export function diff(before, after, cursor) {
  const maxSuffix = Math.min(before.length, after.length - Math.min(cursor, after.length));
  let suffix = 0;
  while (
    suffix < maxSuffix &&
    before[before.length - 1 - suffix] === after[after.length - 1 - suffix]
  ) {
    suffix += 1;
  }
  const maxPrefix = Math.min(before.length, after.length) - suffix;
  let prefix = 0;
  while (prefix < maxPrefix && before[prefix] === after[prefix]) prefix += 1;
  return {
    index: prefix,
    removed: before.length - prefix - suffix,
    inserted: after.slice(prefix, after.length - suffix),
  };
}

/**
 * Where `position` moves when a remote change (a Yjs delta) is applied around it: text
 * inserted before it pushes it right (text inserted exactly at it does not), deleted text
 * before it pulls it left.
 * @param {number} position @param {{ retain?: number, insert?: any, delete?: number }[]} delta
 */
export function transformPosition(position, delta) {
  let index = 0; // in the text before the change
  let moved = position;
  for (const op of delta) {
    if (op.retain) {
      index += op.retain;
    } else if (op.insert !== undefined) {
      const length = typeof op.insert === "string" ? op.insert.length : 1;
      if (index < position) moved += length;
    } else if (op.delete) {
      if (index < position) moved -= Math.min(op.delete, position - index);
      index += op.delete;
    }
    if (index >= position) break;
  }
  return moved;
}

/**
 * Keep a textarea and a Y.Text equal: typing edits the Y.Text, remote changes rewrite the
 * textarea and keep the cursor (and selection) where it was in the text.
 * @param {HTMLTextAreaElement} textarea @param {Y.Text} ytext
 */
function bindTextarea(textarea, ytext) {
  let shown = ytext.toString();
  textarea.value = shown;
  textarea.addEventListener("input", () => {
    const next = textarea.value;
    const { index, removed, inserted } = diff(shown, next, textarea.selectionEnd);
    shown = next;
    if (!removed && !inserted) return;
    ytext.doc?.transact(() => {
      if (removed) ytext.delete(index, removed);
      if (inserted) ytext.insert(index, inserted);
    }, LOCAL);
  });
  ytext.observe((event, transaction) => {
    if (transaction.origin === LOCAL) return;
    const { selectionStart, selectionEnd, selectionDirection } = textarea;
    const start = transformPosition(selectionStart, event.delta);
    const end = transformPosition(selectionEnd, event.delta);
    textarea.value = shown = ytext.toString();
    if (document.activeElement === textarea) {
      textarea.setSelectionRange(start, end, selectionDirection ?? undefined);
    }
  });
}

// ------------------------------------------------------------------------ sending updates

/** Publishes local updates, merged per batch, and remembers whether one may be lost. */
class UpdateSender {
  /** @param {import("/pulsewire.js").Subscription} sub @param {() => void} onChange */
  constructor(sub, onChange) {
    this.sub = sub;
    this.onChange = onChange;
    /** @type {Uint8Array[]} */
    this.queue = [];
    this.inFlight = 0;
    /** A publication failed: the next resync sends whatever the server lacks. */
    this.dirty = false;
    this.timer = 0;
  }

  /** @param {Uint8Array} update */
  add(update) {
    this.queue.push(update);
    if (!this.timer) this.timer = setTimeout(() => this.flush(), BATCH_MS);
    this.onChange();
  }

  async flush() {
    this.timer = 0;
    if (!this.queue.length) return;
    const update = Y.mergeUpdates(this.queue.splice(0));
    this.inFlight += 1;
    try {
      await this.sub.publish({ update: toBase64(update) });
    } catch (error) {
      this.dirty = true; // e.g. the connection was lost: resync sends it again
    } finally {
      this.inFlight -= 1;
      this.onChange();
    }
  }

  get pending() {
    return this.queue.length + this.inFlight;
  }
}

/** Whether `doc` has changes beyond the state vector `vector` (of the server's copy). */
function isAhead(/** @type {Y.Doc} */ doc, /** @type {Uint8Array} */ vector) {
  const theirs = Y.decodeStateVector(vector);
  const ours = Y.decodeStateVector(Y.encodeStateVector(doc));
  return [...ours].some(([client, clock]) => clock > (theirs.get(client) ?? 0));
}

// ---------------------------------------------------------------------------------- page

/** Who edits now: client id -> user name. */
const editors = new Map();

function renderPresence(/** @type {string} */ me) {
  const users = [...new Set(editors.values())].sort();
  $("presence").replaceChildren(
    ...users.map((user) =>
      el(
        "li",
        {},
        el("span", { textContent: user }),
        user === me ? el("span", { className: "you", textContent: "(you)" }) : "",
      ),
    ),
  );
  $("presence-count").textContent = String(users.length);
}

async function main() {
  const wanted = params.get("doc") ?? "welcome";
  const name = DOC_PATTERN.test(wanted) ? wanted : "welcome";
  $("doc-name").textContent = name;
  document.title = `${name} · Notes · pulsewire demo`;
  const me = await askName("to edit notes");
  $("me").textContent = me;

  const ydoc = new Y.Doc();
  const ytext = ydoc.getText("text");
  const textarea = /** @type {HTMLTextAreaElement} */ ($("editor"));
  const client = createClient(me);
  showConnectionState(client, $("connection"));
  let myClientId = "";
  let loaded = false;
  client.on("connected", (/** @type {any} */ ctx) => (myClientId = ctx.client));

  const status = () => {
    const count = `${ytext.length} characters`;
    let text = "loading…";
    if (loaded && client.state !== "connected") text = `offline · ${count}, sent when back`;
    else if (loaded && sender.pending) text = `saving… · ${count}`;
    else if (loaded) text = `saved · ${count}`;
    $("status").textContent = text;
  };

  const sub = client.subscribe(`notes:${name}`, {
    onPublication: (/** @type {any} */ pub) => {
      if (pub.info?.client === myClientId || typeof pub.data?.update !== "string") return;
      Y.applyUpdate(ydoc, fromBase64(pub.data.update), REMOTE);
    },
    onSubscribed: () => resync(),
    onJoin: ({ info }) => {
      editors.set(info.client, info.user);
      renderPresence(me);
    },
    onLeave: ({ info }) => {
      editors.delete(info.client);
      renderPresence(me);
    },
  });
  const sender = new UpdateSender(sub, status);
  ydoc.on("update", (/** @type {Uint8Array} */ update, /** @type {any} */ origin) => {
    if (origin !== REMOTE) sender.add(update);
    status();
  });

  /** Start from (or catch up with) the server's copy; send it what it lacks. */
  async function resync() {
    try {
      const [{ state, vector }, clients] = await Promise.all([
        client.rpc("notes.state", { doc: name }),
        sub.presence(),
      ]);
      Y.applyUpdate(ydoc, fromBase64(state), REMOTE);
      const serverVector = fromBase64(vector);
      if (sender.dirty || isAhead(ydoc, serverVector)) {
        sender.dirty = false;
        sender.add(Y.encodeStateAsUpdate(ydoc, serverVector));
      }
      editors.clear();
      for (const [id, info] of Object.entries(clients)) editors.set(id, info.user);
      renderPresence(me);
      if (!loaded) {
        loaded = true;
        bindTextarea(textarea, ytext);
        textarea.disabled = false;
        textarea.placeholder = "Type here: everyone on this note sees it.";
        textarea.focus();
      }
      status();
    } catch (error) {
      // Lost the connection meanwhile: the next subscription resyncs. Error 104: the server
      // runs no notes service (it comes with `pulsewire serve --demo`).
      if (/** @type {any} */ (error).code === 104) {
        $("status").textContent = "this server has no notes service (start it with --demo)";
      }
    }
  }

  $("doc-form").addEventListener("submit", (/** @type {Event} */ event) => {
    event.preventDefault();
    const url = new URL(location.href);
    url.searchParams.set("doc", $("doc-input").value);
    url.searchParams.set("user", me);
    location.href = url.toString();
  });
  client.on("state", status);
  client.connect();
  window.demo = { client, sub, ydoc, ytext };
}

main();
