/**
 * Live scores demo: a ticker fed by the HTTP API. Backends publish to `scores:live`
 *
 *   { "match": "Lions v Tigers", "home": 2, "away": 1, "minute": 67, "event": "Goal! Lions" }
 *
 * and every open page shows the latest score of each match and a ticker of updates. The
 * channel keeps the last 50 publications: a page starts from them (history), and recovers
 * what it missed after a short disconnection.
 */

import { createClient, el, formatTime, showConnectionState, viewerName } from "../common.js";

const CHANNEL = "scores:live";
const TICKER_SIZE = 50;

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @typedef {{ match: string, home: number, away: number, minute?: number, event?: string }} Score */

/** A publication's data as a Score (tolerating partial data), or null. @returns {Score|null} */
function parseScore(/** @type {any} */ data) {
  if (typeof data !== "object" || data === null) return null;
  const goals = (/** @type {any} */ value) => (Number.isFinite(value) ? Number(value) : 0);
  return {
    match: typeof data.match === "string" && data.match.trim() ? data.match.trim() : "Home v Away",
    home: goals(data.home),
    away: goals(data.away),
    minute: Number.isFinite(data.minute) ? data.minute : undefined,
    event: typeof data.event === "string" ? data.event : undefined,
  };
}

/** "Lions v Tigers" -> ["Lions", "Tigers"]. @param {string} match */
function teams(match) {
  const parts = match.split(/\s+(?:v|vs\.?|-)\s+/i);
  return parts.length === 2 ? parts : [match, ""];
}

/** The board: one card per match, showing its latest score. */
const cards = new Map();

/** @param {Score} score @param {number} offset */
function showOnBoard(score, offset) {
  let card = cards.get(score.match);
  if (card && Number(card.dataset.offset) > offset) return; // an older score
  const [home, away] = teams(score.match);
  const fresh = el(
    "article",
    { className: "card match" },
    el(
      "div",
      { className: "line" },
      el("span", { className: "team", textContent: home }),
      el("span", { className: "score", textContent: `${score.home} – ${score.away}` }),
      el("span", { className: "team away", textContent: away }),
    ),
    el(
      "p",
      { className: "detail" },
      el("span", { className: "minute", textContent: score.minute ? `${score.minute}′` : "" }),
      el("span", { className: "event", textContent: score.event ?? "" }),
    ),
  );
  fresh.dataset.match = score.match;
  fresh.dataset.offset = String(offset);
  if (card) {
    card.replaceWith(fresh);
    fresh.classList.add("flash");
  } else {
    $("board").append(fresh);
  }
  cards.set(score.match, fresh);
  $("empty").hidden = true;
}

/** The ticker: every update, newest first. @param {Score} score @param {any} pub */
function addToTicker(score, pub) {
  const ticker = $("ticker");
  const offset = pub.offset ?? 0;
  if (offset && ticker.querySelector(`[data-offset="${offset}"]`)) return;
  const item = el(
    "li",
    { className: pub.tags?.kind === "goal" || /goal/i.test(score.event ?? "") ? "goal" : "" },
    el("time", { textContent: score.minute ? `${score.minute}′` : formatTime(Date.now()) }),
    el("span", { className: "what", textContent: `${score.match} ${score.home}–${score.away}` }),
    el("span", { className: "event", textContent: score.event ?? "" }),
  );
  item.dataset.offset = String(offset);
  const older = [...ticker.children].find(
    (li) => Number(/** @type {HTMLElement} */ (li).dataset.offset) < offset,
  );
  ticker.insertBefore(item, older ?? null);
  while (ticker.children.length > TICKER_SIZE) ticker.lastElementChild?.remove();
}

/** @param {any} pub */
function show(pub) {
  const score = parseScore(pub.data);
  if (!score) return;
  showOnBoard(score, pub.offset ?? 0);
  addToTicker(score, pub);
}

function reset() {
  cards.clear();
  $("board").replaceChildren($("empty"));
  $("empty").hidden = false;
  $("ticker").replaceChildren();
}

function main() {
  $("curl").textContent = $("curl").textContent.replace("http://127.0.0.1:8000", location.origin);
  const client = createClient(viewerName("scores"));
  showConnectionState(client, $("connection"));
  const sub = client.subscribe(CHANNEL, {
    onPublication: show,
    onSubscribed: async (/** @type {any} */ { recovering, recovered }) => {
      if (recovered) return; // missed scores come as publications
      if (recovering) reset(); // the stream changed (e.g. the server restarted)
      const { publications } = await sub.history({ limit: TICKER_SIZE, reverse: true });
      for (const pub of publications.reverse()) show(pub);
    },
  });
  client.connect();
  window.demo = { client, sub };
}

main();
