"""The admin page: ``/admin`` (HTML) and ``/admin/stats`` (JSON), behind a password.

HTTP Basic authentication (any user name, the configured password) or ``Authorization:
Bearer <password>``; without a configured password the page answers 404, so a node never
exposes it by accident. The page polls ``/admin/stats`` once a second.

Wrong passwords count in the hub's failed-authentication guard: an address over its budget
gets 429 with ``Retry-After`` before its password is looked at. Every answer carries headers
that keep the page out of frames and other origins' reach (see :data:`SECURITY_HEADERS`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

from ..hub.auth import secret_matches
from ..hub.hub import Hub
from .http import HttpRequest, HttpResponse, json_response
from .stats import StatsSource

__all__ = ["SECURITY_HEADERS", "AdminPages"]


class AdminPages:
    """The ``/admin`` and ``/admin/stats`` handlers: ``hub``'s numbers and those of ``stats``
    (the front door's), behind ``password`` (None: both answer 404)."""

    def __init__(self, hub: Hub, stats: StatsSource, password: str | None) -> None:
        self.hub = hub
        self.stats_source = stats
        self.password = password

    def _given(self, request: HttpRequest) -> str | None:
        """The password the request offers (None: it offers none)."""
        scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                return base64.b64decode(value.strip()).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return ""  # garbage counts as a wrong password, not as none
        if scheme.lower() == "bearer":
            return value.strip()
        return None

    def _refusal(self, request: HttpRequest) -> HttpResponse | None:
        """None when the request may see the admin pages, else the answer that refuses it."""
        if self.password is None:
            return _secured(
                HttpResponse(404, "the admin page is disabled: configure admin_password\n")
            )
        guard = self.hub.auth_guard
        address = guard.client(request.remote_address, request.headers)
        wait = guard.check(address, "admin")
        if wait:  # before the password is looked at
            reason = f"too many wrong admin passwords from your address: retry in {wait} s\n"
            return _secured(HttpResponse(429, reason, [("Retry-After", str(wait))]))
        given = self._given(request)
        if given is not None and secret_matches(given, self.password):
            return None
        if given is not None:  # no Authorization at all is a browser asking, not a guess
            guard.failed(address, "admin")
        return _secured(
            HttpResponse(
                401,
                "admin password required\n",
                [("WWW-Authenticate", 'Basic realm="pulsewire admin"')],
            )
        )

    async def page(self, request: HttpRequest) -> HttpResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        return _secured(
            HttpResponse(200, _PAGE, [("Content-Type", "text/html; charset=utf-8")]),
            PAGE_CSP,
        )

    async def stats(self, request: HttpRequest) -> HttpResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        return _secured(json_response(self.snapshot()))

    def snapshot(self) -> dict[str, Any]:
        """What ``/admin/stats`` answers (JSON)."""
        source = self.stats_source
        hub = self.hub
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
            "uptime": round(time.time() - source.started_at, 1),
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
            "handshakes": source.handshakes(),
            "refusals": {str(k): v for k, v in sorted(source.refusals().items())},
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


def _csp_hashes(tag: str) -> str:
    """CSP source expressions for the page's inline ``<tag>`` blocks (their exact text)."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", _PAGE, re.DOTALL)
    digests = (hashlib.sha256(block.encode("utf-8")).digest() for block in blocks)
    return " ".join(f"'sha256-{base64.b64encode(d).decode('ascii')}'" for d in digests)


PAGE_CSP = (
    # Nothing by default; the page's own inline style and script by hash (no
    # 'unsafe-inline': an injected block would not run), its polling fetch to this origin
    # only, and no framing (clickjacking), no <base> or form targets to hijack.
    f"default-src 'none'; style-src {_csp_hashes('style')}; script-src {_csp_hashes('script')}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The Content-Security-Policy of the HTML page."""

SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),  # frame-ancestors for browsers that predate CSP 2
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
"""Headers on every /admin answer (the page, the stats, the refusals)."""

_NOTHING_CSP = "default-src 'none'; frame-ancestors 'none'"
"""The policy of answers that are not the page: they load and run nothing."""


def _secured(response: HttpResponse, csp: str = _NOTHING_CSP) -> HttpResponse:
    response.headers = [
        *response.headers,
        *SECURITY_HEADERS,
        ("Content-Security-Policy", csp),
    ]
    return response
