"""Demo mode (``pulsewire serve --demo``, what ``make run`` starts): namespaces for the demo
apps and a token endpoint that signs a connection token for any user name.

The token endpoint hands out identities to anyone who asks: it exists so the demos work
without a login system, and demo mode refuses to listen on non-loopback addresses unless an
API key is set explicitly.
"""

from __future__ import annotations

import re
import secrets
import time

import jwt

from ..hub.config import ChannelOptions, HubConfig
from ..transports.http_types import HttpRequest, HttpResponse, json_response

__all__ = ["DemoTokens", "demo_config"]


def demo_config(base: HubConfig) -> HubConfig:
    """``base`` plus the demo namespaces (kept when already configured) and a token secret."""
    namespaces = {
        "chat": ChannelOptions(
            presence=True, join_leave=True, history_size=100, history_ttl=3600, allow_publish=True
        ),
        "typing": ChannelOptions(allow_publish=True),
        "dashboard": ChannelOptions(history_size=50, history_ttl=300),
        "notes": ChannelOptions(
            presence=True, join_leave=True, history_size=1000, history_ttl=3600, allow_publish=True
        ),
        "scores": ChannelOptions(history_size=50, history_ttl=86400),
        **base.namespaces,
    }
    secret = base.token_hmac_secret or secrets.token_urlsafe(32)
    return base.replace(namespaces=namespaces, token_hmac_secret=secret)


_NAME = re.compile(r"[\w .\-]{1,32}")


class DemoTokens:
    """``GET /demo/token?user=NAME`` -> ``{"token": ..., "user": ...}`` (HS256, 1 hour)."""

    def __init__(self, secret: str, ttl: float = 3600.0) -> None:
        self.secret = secret
        self.ttl = ttl

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.query.get("user", "").strip()
        if not _NAME.fullmatch(user):
            return json_response(
                {"error": "user must be 1-32 letters, digits, spaces, '.', '-' or '_'"}, 400
            )
        claims = {"sub": user, "exp": int(time.time() + self.ttl), "info": {"name": user}}
        return json_response(
            {"token": jwt.encode(claims, self.secret, algorithm="HS256"), "user": user}
        )
