"""The backend proxy of ``pulsewire serve``: the hub's hooks answered by HTTP POSTs to the
application's backend (docs/proxy.md).

:mod:`~pulsewire.server.proxy.settings` reads the ``[proxy]`` table (no extra needed);
:mod:`~pulsewire.server.proxy.calls` makes the calls (``httpx``, the ``proxy`` extra) and
:mod:`~pulsewire.server.proxy.hooks` turns them into the hooks of :mod:`pulsewire.hub.hooks`.
"""

from __future__ import annotations

from .settings import PROXY_TYPES, ROUTES, ProxySettings, RouteSettings, proxy_settings

__all__ = ["PROXY_TYPES", "ROUTES", "ProxySettings", "RouteSettings", "proxy_settings"]
