"""``pulsewire serve``: read settings (flags over config file over defaults) and run a node."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import ssl
import sys
from typing import Any

from ..aio.loop import run
from ..hub.config import HubConfig, load_config
from ..hub.hub import Hub
from .app import HubServer
from .demo import DemoTokens, demo_config

__all__ = ["build_server", "serve_main"]

logger = logging.getLogger("pulsewire.server")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(args: argparse.Namespace) -> HubServer:
    """Settings from flags (first), the config file, then defaults; raises ValueError if bad."""
    config, server_table = load_config(args.config) if args.config else (HubConfig(), {})
    changes: dict[str, Any] = {}
    if args.engine:
        changes["engine"] = args.engine
    if args.node_name:
        changes["node_name"] = args.node_name
    if args.api_key:
        changes["api_key"] = args.api_key
    if args.token_secret:
        changes["token_hmac_secret"] = args.token_secret
    if args.allow_anonymous:
        changes["allow_anonymous"] = True
    config = config.replace(**changes)
    host = args.host or server_table.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(server_table.get("port", 8000))
    origins = (
        args.allowed_origin
        if args.allowed_origin is not None
        else server_table.get("allowed_origins", [])
    )
    demo = args.demo or bool(server_table.get("demo", False))
    if demo:
        if not _is_loopback(host) and not config.api_key:
            raise ValueError(
                "--demo hands out tokens to anyone: on a non-loopback host set --api-key too"
            )
        config = demo_config(config)
        if not config.api_key:
            config = config.replace(api_key="demo")
    context = None
    cert = args.tls_cert or server_table.get("tls_cert")
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, args.tls_key or server_table.get("tls_key"))
    hub = Hub(config)
    server = HubServer(
        hub, host, port, api_key=config.api_key, allowed_origins=origins, ssl=context
    )
    if demo:
        assert config.token_hmac_secret is not None
        server.http.add("/demo/token", DemoTokens(config.token_hmac_secret))
        server.demo = True  # type: ignore[attr-defined]
    return server


async def _serve(args: argparse.Namespace) -> int:
    try:
        server = build_server(args)
    except (ValueError, OSError) as exc:
        print(f"pulsewire serve: {exc}", file=sys.stderr)
        return 2
    try:
        await server.start()
    except OSError as exc:
        print(f"pulsewire serve: cannot start: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if getattr(server, "demo", False):
        print("demo mode: API key from --api-key or 'demo'; tokens from /demo/token", flush=True)
    print(f"listening on {server.url}", flush=True)
    await stop.wait()
    await server.close()
    return 0


def serve_main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(_serve(args))
