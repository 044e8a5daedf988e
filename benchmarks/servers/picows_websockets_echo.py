"""The websockets echo server run on picows' websockets-compatible API (picows.websockets)."""

from __future__ import annotations

from picows.websockets import broadcast, serve
from websockets_echo import run

if __name__ == "__main__":
    run(serve, broadcast, "picows websockets-compatible API echo server (uvloop)")
