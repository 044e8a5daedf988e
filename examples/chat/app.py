"""The chat app of docs/tutorial.md: FastAPI issues connection tokens, pulsewire carries chat.

Run it from the repository's root with ``uvicorn examples.chat.app:app``. By default the hub
is mounted in this app at /realtime; with ``CHAT_HUB_URL`` set, it is a separate
``pulsewire serve`` process at that URL instead (same secret, see pulsewire.toml).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, StringConstraints

from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.server.asgi import HubASGI

log = logging.getLogger("chat")

# The key that signs connection tokens (HS256: 32 bytes or more). The hub checks tokens
# with the same secret. The default is for trying the tutorial on your machine only.
SECRET = os.environ.get("CHAT_SECRET", "dev-only-secret-set-CHAT_SECRET-in-production")
if "CHAT_SECRET" not in os.environ:
    log.warning("CHAT_SECRET is not set: using the tutorial's development secret")
HUB_URL = os.environ.get("CHAT_HUB_URL")  # set: the hub is a `pulsewire serve` there
API_KEY = os.environ.get("CHAT_API_KEY", "dev-only-api-key")  # that hub's HTTP API key
ROOM = "chat:lobby"
TOKEN_LIFETIME = 3600  # seconds; the page asks for a new token when it expires

# Channels named chat:* keep their last 50 messages (for a day), know who is subscribed,
# tell subscribers when someone comes or goes, and let subscribers publish.
CHAT = ChannelOptions(
    presence=True,
    join_leave=True,
    history_size=50,
    history_ttl=24 * 3600,
    allow_publish=True,
)

hub: Hub | None = None
if HUB_URL is None:
    hub = Hub(HubConfig(token_hmac_secret=SECRET, namespaces={"chat": CHAT}))
    realtime = HubASGI(hub)
    app = FastAPI(lifespan=realtime.lifespan)  # starts the hub with the app, stops it after
    app.mount("/realtime", realtime)
else:
    app = FastAPI()


class Login(BaseModel):
    """What the login form sends: a name is enough (this is a tutorial: no password)."""

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]


def connection_token(name: str) -> str:
    """A connection token for ``name``: the hub trusts ``sub`` and shows ``info`` to others."""
    claims = {"sub": name, "info": {"name": name}, "exp": int(time.time()) + TOKEN_LIFETIME}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def publish(data: dict[str, Any]) -> None:
    """Publish to the room: in-process when the hub is mounted, else through its HTTP API."""
    if hub is not None:
        await hub.publish(ROOM, data)
        return
    async with httpx.AsyncClient(timeout=5) as client:
        reply = await client.post(
            f"{HUB_URL}/api/publish",
            json={"channel": ROOM, "data": data},
            headers={"Authorization": f"apikey {API_KEY}"},
        )
        reply.raise_for_status()


@app.get("/config")
async def config() -> dict[str, str]:
    """Where the page finds the hub (and pulsewire.js)."""
    return {"hub": HUB_URL or "/realtime"}


@app.post("/login")
async def login(body: Login) -> dict[str, str]:
    """The login form: a token for the name, and a message to the room from the app."""
    await publish({"text": f"{body.name} logged in"})
    return {"token": connection_token(body.name)}


@app.post("/token")
async def token(body: Login) -> dict[str, str]:
    """A fresh token for a page that is already logged in (after a reload, or on expiry)."""
    return {"token": connection_token(body.name)}


# Last: the page and its script (a mount at "/" would hide the routes registered after it).
app.mount("/", StaticFiles(directory=Path(__file__).parent / "static", html=True))
