"""The admin page: ``/admin`` (HTML) and ``/admin/stats`` (JSON), behind a password.

HTTP Basic authentication (any user name, the configured password) or ``Authorization:
Bearer <password>``; without a configured password the page answers 404, so a node never
exposes it by accident. The page polls ``/admin/stats`` once a second.
"""

from __future__ import annotations

import base64
import hmac
import time
from typing import TYPE_CHECKING, Any

from .http import HttpRequest, HttpResponse, json_response

if TYPE_CHECKING:
    from .app import HubServer

__all__ = ["AdminPages"]


class AdminPages:
    def __init__(self, server: HubServer, password: str | None) -> None:
        self.server = server
        self.password = password

    def _authorized(self, request: HttpRequest) -> bool:
        assert self.password is not None
        scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
        given = ""
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() == "bearer":
            given = value.strip()
        return hmac.compare_digest(given.encode(), self.password.encode())

    def _refusal(self) -> HttpResponse:
        if self.password is None:
            return HttpResponse(404, "the admin page is disabled: configure admin_password\n")
        return HttpResponse(
            401,
            "admin password required\n",
            [("WWW-Authenticate", 'Basic realm="pulsewire admin"')],
        )

    async def page(self, request: HttpRequest) -> HttpResponse:
        if self.password is None or not self._authorized(request):
            return self._refusal()
        return HttpResponse(
            200,
            _PAGE,
            [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
        )

    async def stats(self, request: HttpRequest) -> HttpResponse:
        if self.password is None or not self._authorized(request):
            return self._refusal()
        return json_response(self.snapshot(), headers=[("Cache-Control", "no-store")])

    def snapshot(self) -> dict[str, Any]:
        server = self.server
        hub = server.hub
        traffic = {
            kind: dict(
                zip(("messages_in", "bytes_in", "messages_out", "bytes_out"), counts, strict=True)
            )
            for kind, counts in hub.metrics.traffic.items()
        }
        transports: dict[str, int] = {}
        for session in hub.sessions.values():
            transports[session.transport.kind] = transports.get(session.transport.kind, 0) + 1
        channels = sorted(hub.channels.items(), key=lambda item: -item[1])[:50]
        return {
            "node": hub.node_id,
            "time": time.time(),
            "uptime": round(time.time() - server.started_at, 1),
            "engine": {"name": hub.engine.name, "available": hub.engine.available},
            "nodes": hub.nodes,
            "sessions": len(hub.sessions),
            "users": len(hub.users),
            "transports": transports,
            "channels": {
                "count": len(hub.channels),
                "top": [{"name": n, "subscribers": c} for n, c in channels],
            },
            "traffic": traffic,
            "handshakes": server.websocket.handshakes,
            "refusals": {
                str(k): v for k, v in {**server.http.refusals, **server.websocket.refusals}.items()
            },
        }


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pulsewire admin</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d2330; }
h1 { margin: 0 0 1rem; font-size: 1.4rem; } .grid { display: grid; gap: 1rem;
grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); }
section { border: 1px solid #d8dde8; border-radius: 8px; padding: .8rem 1rem; }
h2 { font-size: .95rem; margin: 0 0 .5rem; color: #51607a; } .big { font-size: 1.8rem; }
table { border-collapse: collapse; width: 100%; } td { padding: .15rem .3rem; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } .down { color: #b3261e; }
</style></head><body>
<h1>pulsewire admin — node <span id="node">…</span></h1>
<div class="grid">
<section><h2>Sessions</h2><div class="big" id="sessions">0</div>
<div id="transports"></div></section>
<section><h2>Users</h2><div class="big" id="users">0</div></section>
<section><h2>Engine</h2><div class="big" id="engine">…</div></section>
<section><h2>Messages per second (in / out)</h2><div class="big" id="rate">0 / 0</div></section>
<section><h2>Nodes</h2><table id="nodes"></table></section>
<section><h2>Channels</h2><table id="channels"></table></section>
<section><h2>Refusals by status</h2><table id="refusals"></table></section>
</div>
<script>
let last = null;
function rows(table, items) {
  const el = document.getElementById(table);
  el.replaceChildren(...items.map(([k, v]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = k;
    const b = document.createElement("td"); b.className = "n"; b.textContent = v;
    tr.append(a, b); return tr;
  }));
}
function total(traffic, i) {
  return Object.values(traffic).reduce((sum, t) => sum + Object.values(t)[i], 0);
}
async function tick() {
  try {
    const s = await (await fetch("/admin/stats", {credentials: "same-origin"})).json();
    document.getElementById("node").textContent = s.node;
    document.getElementById("sessions").textContent = s.sessions;
    document.getElementById("users").textContent = s.users;
    const engine = document.getElementById("engine");
    engine.textContent = s.engine.name + (s.engine.available ? " ✓" : " ✗ down");
    engine.className = "big" + (s.engine.available ? "" : " down");
    document.getElementById("transports").textContent =
      Object.entries(s.transports).map(([k, v]) => k + ": " + v).join(", ");
    if (last) {
      const dt = s.time - last.time;
      const rin = (total(s.traffic, 0) - total(last.traffic, 0)) / dt;
      const rout = (total(s.traffic, 2) - total(last.traffic, 2)) / dt;
      document.getElementById("rate").textContent = Math.round(rin) + " / " + Math.round(rout);
    }
    last = s;
    rows("nodes", Object.entries(s.nodes).map(([k, v]) => [k, v.sessions + " sessions"]));
    rows("channels", s.channels.top.map(c => [c.name, c.subscribers]));
    rows("refusals", Object.entries(s.refusals));
  } catch (e) { document.getElementById("engine").textContent = "unreachable"; }
}
tick(); setInterval(tick, 1000);
</script></body></html>
"""
