/**
 * What the demo apps share: a user name and its token (from demo mode's `/demo/token`), a
 * pulsewire Client built from the page's query string, a connection-state badge and a tiny
 * DOM helper.
 *
 * Query parameters understood by every demo page:
 *   ?user=NAME                           skip the name prompt
 *   ?transport=websocket|sse|longpoll    force one transport (default: all, in that order)
 */

import { Client } from "/pulsewire.js";

export const params = new URLSearchParams(location.search);

const NAME_KEY = "pulsewire-demo-name";
const NAME_PATTERN = /^[\w .\-]{1,32}$/;
const TRANSPORTS = ["websocket", "sse", "longpoll"];

/**
 * `document.createElement` with properties and children.
 * @param {string} tag
 * @param {{ [key: string]: any }} [props] e.g. { className: "x", textContent: "y" }
 * @param {...(Node | string)} children
 * @returns {HTMLElement}
 */
export function el(tag, props = {}, ...children) {
  const element = Object.assign(document.createElement(tag), props);
  element.append(...children);
  return element;
}

/** @param {Date | number} when @returns {string} e.g. "14:03:27" */
export function formatTime(when) {
  return new Date(when).toLocaleTimeString([], { hour12: false });
}

/**
 * A connection token for `user` from the demo token endpoint.
 * @param {string} user @returns {Promise<string>}
 */
export async function fetchToken(user) {
  const response = await fetch(`/demo/token?user=${encodeURIComponent(user)}`);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ?? `token: HTTP ${response.status}`);
  return body.token;
}

/** The transports to use: `?transport=` forces one. @returns {string[]} */
export function transportsFromQuery() {
  const forced = params.get("transport");
  return forced && TRANSPORTS.includes(forced) ? [forced] : TRANSPORTS;
}

/**
 * A Client of this page's hub, authenticated as `user` (not connected yet).
 * @param {string} user @param {object} [options] more Client options
 * @returns {Client}
 */
export function createClient(user, options = {}) {
  return new Client(location.origin, {
    getToken: () => fetchToken(user),
    transports: transportsFromQuery(),
    ...options,
  });
}

/** A made-up name for pages that do not ask for one. @param {string} prefix */
export function viewerName(prefix = "viewer") {
  return `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * The user's name: `?user=`, else asked with a small form (remembered for next time).
 * @param {string} purpose shown in the form, e.g. "to chat"
 * @returns {Promise<string>}
 */
export function askName(purpose) {
  const given = params.get("user")?.trim();
  if (given && NAME_PATTERN.test(given)) return Promise.resolve(given);
  return new Promise((resolve) => {
    const input = el("input", {
      name: "name",
      required: true,
      maxLength: 32,
      pattern: NAME_PATTERN.source.slice(1, -1),
      placeholder: "e.g. Ada",
      value: localStorage.getItem(NAME_KEY) ?? "",
      autocomplete: "nickname",
    });
    const form = el(
      "form",
      { className: "card name-form" },
      el("h2", { textContent: `Your name ${purpose}` }),
      el("p", { className: "muted", textContent: "Letters, digits, spaces, '.', '-', '_'." }),
      input,
      el("button", { type: "submit", textContent: "Join" }),
    );
    const overlay = el("div", { className: "overlay" }, form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = input.value.trim();
      localStorage.setItem(NAME_KEY, name);
      overlay.remove();
      resolve(name);
    });
    document.body.append(overlay);
    input.focus();
  });
}

/**
 * Keep `badge` showing the client's connection state: "connecting", "connected over
 * websocket", "disconnected: reason"; its `data-state` attribute holds the bare state.
 * @param {Client} client @param {HTMLElement} badge
 */
export function showConnectionState(client, badge) {
  let lastLoss = "";
  const render = (/** @type {string} */ state, /** @type {string} */ text, title = text) => {
    badge.dataset.state = state;
    badge.textContent = text;
    badge.title = title;
  };
  client.on("disconnected", (/** @type {any} */ { code, reason }) => {
    lastLoss = `${reason || "connection lost"} (${code})`;
  });
  client.on("state", (/** @type {any} */ { state, reason }) => {
    if (state === "connected") {
      lastLoss = "";
      render(state, `connected · ${client.transport}`, reason);
    } else if (state === "connecting") {
      render(state, lastLoss ? `reconnecting… ${lastLoss}` : "connecting…", reason);
    } else {
      render(state, `disconnected: ${lastLoss || reason}`);
    }
  });
  render("disconnected", "not connected");
}
