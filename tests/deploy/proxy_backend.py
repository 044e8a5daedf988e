"""A FastAPI backend for the proxy tests: ``python proxy_backend.py PORT`` serves it under
uvicorn on 127.0.0.1:PORT (routes under ``/pw/``; ``GET /calls`` counts the calls by route).

* connect: the cookie ``sessionid=ann-session`` is Ann (info, the server-side subscription
  ``notif:#ann``; ``data: {"ttl": S}`` makes her credentials expire in S seconds), the
  header ``Authorization: Bearer bob`` is Bob; anybody else is refused (103);
* refresh: one hour more, info ``{"refreshed": n}``;
* subscribe: ``secret:*`` is refused (103), ``short:*`` expires in 1 s, others get info;
* sub_refresh: extends a subscription once (1 s), then says it expired;
* publish: ``{"text": t}`` is published as ``{"text": t.upper(), "by": user}``;
* rpc: ``add`` sums ``data``, any other method is 104.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import uvicorn
from fastapi import FastAPI

app = FastAPI()
calls: Counter[str] = Counter()


@app.get("/calls")
async def counts() -> dict[str, int]:
    return dict(calls)


@app.post("/pw/connect")
async def connect(body: dict[str, Any]) -> dict[str, Any]:
    calls["connect"] += 1
    if body.get("cookies", {}).get("sessionid") == "ann-session":
        ttl = (body.get("data") or {}).get("ttl", 3600)
        result = {"user": "ann", "info": {"name": "Ann"}, "subs": ["notif:#ann"]}
        return {"result": {**result, "expire_at": time.time() + ttl}}
    if body.get("headers", {}).get("authorization") == "Bearer bob":
        return {"result": {"user": "bob"}}
    return {"error": {"code": 103, "message": "unknown session"}}


@app.post("/pw/refresh")
async def refresh(body: dict[str, Any]) -> dict[str, Any]:
    calls["refresh"] += 1
    return {"result": {"expire_at": time.time() + 3600, "info": {"refreshed": calls["refresh"]}}}


@app.post("/pw/subscribe")
async def subscribe(body: dict[str, Any]) -> dict[str, Any]:
    calls["subscribe"] += 1
    channel = body["channel"]
    if channel.startswith("secret:"):
        return {"error": {"code": 103, "message": f"{body['user']} may not read {channel}"}}
    if channel.startswith("short:"):
        return {"result": {"expire_at": time.time() + 1}}
    return {"result": {"info": {"seat": calls["subscribe"]}}}


@app.post("/pw/sub_refresh")
async def sub_refresh(body: dict[str, Any]) -> dict[str, Any]:
    calls["sub_refresh"] += 1
    if calls["sub_refresh"] == 1:
        return {"result": {"expire_at": time.time() + 1}}
    return {"result": {"expired": True}}


@app.post("/pw/publish")
async def publish(body: dict[str, Any]) -> dict[str, Any]:
    calls["publish"] += 1
    return {"result": {"data": {"text": body["data"]["text"].upper(), "by": body["user"]}}}


@app.post("/pw/rpc")
async def rpc(body: dict[str, Any]) -> dict[str, Any]:
    calls["rpc"] += 1
    if body["method"] == "add":
        return {"result": {"data": sum(body["data"])}}
    return {"error": {"code": 104, "message": f"no method {body['method']}"}}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
