// The chat page (docs/tutorial.md): log in, connect to the hub with pulsewire.js, chat.
const ROOM = "chat:lobby";
const $ = (id) => document.getElementById(id);

// Where the hub is: "/realtime" when the app mounts it, a URL when it runs beside the app.
// The hub serves its browser client, pulsewire.js, at <hub>/pulsewire.js.
const { hub } = await (await fetch("/config")).json();
const { Client } = await import(`${hub}/pulsewire.js`);

/** Asks the app for a connection token: POST /login (the form) or /token (later ones). */
async function fetchToken(path, name) {
  const reply = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!reply.ok) throw new Error(`${path} answered ${reply.status} ${reply.statusText}`);
  return (await reply.json()).token;
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = new FormData(event.target).get("name").trim();
  try {
    const token = await fetchToken("/login", name);
    sessionStorage.setItem("name", name); // this tab stays logged in across reloads
    start(name, token);
  } catch (error) {
    $("login-error").textContent = `Cannot log in: ${error.message}`;
  }
});

const name = sessionStorage.getItem("name");
if (name) start(name, undefined); // a reload: pulsewire.js asks getToken for a token

function start(name, token) {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me").textContent = name;
  const client = new Client(hub, { token, getToken: () => fetchToken("/token", name) });
  client.on("state", ({ state }) => ($("status").textContent = state));
  const room = client.subscribe(ROOM);

  // Messages, in offset order: live ones, and the last 50 from the room's history.
  const shown = new Set(); // offsets on the page
  function show({ data, offset, info }) {
    if (shown.has(offset)) return;
    shown.add(offset);
    const item = document.createElement("li");
    item.dataset.offset = offset;
    const from = document.createElement("span");
    from.className = "from";
    from.textContent = info?.conn_info?.name ?? "chat"; // no info: the app published it
    item.append(from, `: ${data.text}`); // text, never HTML
    const later = [...$("messages").children].find((li) => Number(li.dataset.offset) > offset);
    $("messages").insertBefore(item, later ?? null);
  }
  room.on("publication", show);

  // Who is here: one entry per connection (a user may have several tabs open).
  const people = new Map(); // client id -> name
  function showPeople() {
    const names = [...new Set(people.values())].sort();
    const items = names.map((n) => Object.assign(document.createElement("li"), { textContent: n }));
    $("people").replaceChildren(...items);
  }
  room.on("join", ({ info }) => (people.set(info.client, info.conn_info.name), showPeople()));
  room.on("leave", ({ info }) => (people.delete(info.client), showPeople()));

  // After every (re)subscribe: who is here now and, unless the client recovered what it
  // missed while disconnected, the room's latest messages.
  room.on("subscribed", async ({ recovering, recovered }) => {
    if (!(recovering && recovered)) {
      $("messages").replaceChildren();
      shown.clear();
      const { publications } = await room.history({ limit: 50, reverse: true });
      publications.reverse().forEach(show);
    }
    const present = await room.presence();
    people.clear();
    for (const [id, info] of Object.entries(present)) people.set(id, info.conn_info.name);
    showPeople();
  });

  $("send").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    try {
      await room.publish({ text: input.value });
      input.value = "";
    } catch (error) {
      $("status").textContent = `not sent: ${error.message}`;
    }
  });
  client.connect();
}
