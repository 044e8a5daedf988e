"""What a node runs with: :class:`ServeOptions` (the command line's options, as a mapping
or a typed object) resolved with the config file and defaults into :class:`Settings`.

``pulsewire serve`` turns its flags into :class:`ServeOptions` and nothing else: the node
runner (:mod:`pulsewire.server.node`), the supervisor (:mod:`pulsewire.server.workers`) and
the reload (:mod:`pulsewire.server.reload`) read only these two types.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..aio.budget import BudgetLimits
from ..hub.config import HubConfig, load_config_tables
from ..hub.config_types import check_types, field_types, unknown_keys
from .limits import ConnectionLimits
from .proxy import ProxySettings, proxy_settings

__all__ = [
    "BUDGET_KEYS",
    "DEFAULT_DRAIN_TIMEOUT",
    "FRONT_DOOR_FIELDS",
    "LIMIT_KEYS",
    "SERVER_KEYS",
    "TIMEOUT_KEYS",
    "ServeOptions",
    "Settings",
    "front_door_changes",
    "load_settings",
    "pin_generated_secret",
]

logger = logging.getLogger("pulsewire.server")


@dataclass(frozen=True)
class ServeOptions:
    """The options of ``pulsewire serve`` (None/False/empty: not given, the config file or
    the default decides). Build one from a mapping with :meth:`from_mapping`."""

    config: str | None = None
    host: str | None = None
    port: int | None = None
    engine: str | None = None
    node_name: str | None = None
    api_key: str | None = None
    token_secret: str | None = None
    token_jwks_url: str | None = None
    allow_anonymous: bool = False
    allowed_origins: tuple[str, ...] | None = None
    demo: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    log_format: str | None = None
    log_level: str | None = None
    workers: int | None = None
    drain_timeout: float | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> ServeOptions:
        """Options from a mapping of the field names; ValueError names unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown serve option(s): {', '.join(unknown)}")
        values = dict(options)
        if values.get("allowed_origins") is not None:
            values["allowed_origins"] = tuple(values["allowed_origins"])
        return cls(**values)

    def replace(self, **changes: Any) -> ServeOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)


DEFAULT_DRAIN_TIMEOUT = 10.0
LIMIT_KEYS = frozenset(
    {
        "max_connections",
        "max_connections_per_ip",
        "connections_per_second_per_ip",
        "connections_burst_per_ip",
    }
)
BUDGET_KEYS = {
    "bytes_high_per_connection": "connection_high",
    "max_bytes_per_connection": "connection_hard",
    "bytes_high_per_ip": "address_high",
    "max_bytes_per_ip": "address_hard",
}
"""``[server]`` memory budget settings and the :class:`BudgetLimits` fields they set."""
TIMEOUT_KEYS = {
    "head_timeout": 10.0,
    "body_timeout": 30.0,
    "idle_timeout": 75.0,
    "send_timeout": 30.0,
    "longpoll_timeout": 25.0,
    "longpoll_idle_timeout": 60.0,
}
"""``[server]`` deadlines (seconds, positive) and their defaults."""
SERVER_TYPES: dict[str, Any] = {
    "host": str,
    "port": int,
    "allowed_origins": list[str],
    "demo": bool,
    "tls_cert": str,
    "tls_key": str,
    "workers": int,
    "drain_timeout": float,
    "max_message_size": int,
    "body_min_rate": int,
    "admin_password": str,
    **{key: field_types(ConnectionLimits)[key] for key in LIMIT_KEYS},
    **dict.fromkeys(BUDGET_KEYS, int),
    **dict.fromkeys(TIMEOUT_KEYS, float),
}
"""The settings of the ``[server]`` table and their types (checked when the file is read)."""
SERVER_KEYS = frozenset(SERVER_TYPES)
"""The settings of the ``[server]`` table."""
FRONT_DOOR_FIELDS = (
    "limits",
    "budget_limits",
    "max_message_size",
    "body_min_rate",
    *TIMEOUT_KEYS,
)
""":class:`Settings` fields of the front door's limits and deadlines: fixed at start (a
reload logs those that changed as "restart needed", see :func:`front_door_changes`)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """What a node runs with, resolved from flags, the config file and defaults."""

    config: HubConfig
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_origins: tuple[str, ...] = ()
    demo: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: int | None = None
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    max_message_size: int = 65536
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    body_min_rate: int = 1024
    idle_timeout: float = 75.0
    send_timeout: float = 30.0
    longpoll_timeout: float = 25.0
    longpoll_idle_timeout: float = 60.0
    budget_limits: BudgetLimits = field(default_factory=BudgetLimits)
    admin_password: str | None = None
    proxy: ProxySettings | None = None
    """The backend proxy (``[proxy]``), or None."""
    config_file: str | None = None
    """The config file read (``--config``), or None."""
    generated_secret: bool = field(default=False, compare=False)
    """The demo's token secret was made up here (pin it before starting more processes)."""


def load_settings(options: ServeOptions | Mapping[str, Any]) -> Settings:
    """``options`` (first), the config file they name, then defaults; raises ValueError or
    OSError if bad."""
    args = options if isinstance(options, ServeOptions) else ServeOptions.from_mapping(options)
    config, tables = load_config_tables(args.config) if args.config else (HubConfig(), {})
    table = tables.get("server", {})
    _check_server_table(table, args.config)
    changes: dict[str, Any] = {}
    if args.engine:
        changes["engine"] = args.engine
    if args.node_name:
        changes["node_name"] = args.node_name
    if args.api_key:
        changes["api_key"] = args.api_key
    if args.token_secret:
        changes["token_hmac_secret"] = args.token_secret
    if args.token_jwks_url:
        changes["token_jwks_url"] = args.token_jwks_url
    if args.allow_anonymous:
        changes["allow_anonymous"] = True
    config = config.replace(**changes)
    host = args.host or str(table.get("host", "127.0.0.1"))
    port = args.port if args.port is not None else int(table.get("port", 8000))
    flag_origins = args.allowed_origins
    origins = flag_origins if flag_origins is not None else table.get("allowed_origins", [])
    if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
        raise ValueError("[server] allowed_origins must be a list of strings")
    demo = args.demo or bool(table.get("demo", False))
    generated = False
    if demo:
        if not _is_loopback(host) and not config.api_key:
            raise ValueError(
                "--demo hands out tokens to anyone: on a non-loopback host set --api-key too"
            )
        from ..demos import demo_config

        generated = config.token_hmac_secret is None
        config = demo_config(config)
        if not config.api_key:
            config = config.replace(api_key="demo")
    workers = args.workers
    if workers is None and table.get("workers") is not None:
        workers = int(table["workers"])
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    drain_timeout = args.drain_timeout
    if drain_timeout is None:
        drain_timeout = float(table.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT))
    if drain_timeout < 0:
        raise ValueError("drain_timeout must not be negative")
    limits = ConnectionLimits(**{k: table[k] for k in LIMIT_KEYS if k in table})
    max_message_size = int(table.get("max_message_size", 65536))
    if max_message_size <= 0:
        raise ValueError("[server] max_message_size must be positive")
    timeouts = {key: float(table.get(key, default)) for key, default in TIMEOUT_KEYS.items()}
    for key, value in timeouts.items():
        if value <= 0:
            raise ValueError(f"[server] {key} must be positive")
    body_min_rate = int(table.get("body_min_rate", 1024))
    if body_min_rate < 0:
        raise ValueError("[server] body_min_rate must not be negative")
    admin_password = os.environ.get("PULSEWIRE_ADMIN_PASSWORD") or table.get("admin_password")
    return Settings(
        config=config,
        admin_password=admin_password,
        proxy=_proxy_settings(tables.get("proxy", {}), args.config),
        limits=limits,
        budget_limits=_budget_limits(table, max_message_size),
        max_message_size=max_message_size,
        body_min_rate=body_min_rate,
        **timeouts,
        host=host,
        port=port,
        allowed_origins=tuple(origins),
        demo=demo,
        tls_cert=args.tls_cert or table.get("tls_cert"),
        tls_key=args.tls_key or table.get("tls_key"),
        workers=workers,
        drain_timeout=drain_timeout,
        config_file=args.config,
        generated_secret=generated,
    )


def _proxy_settings(table: dict[str, Any], path: str | None) -> ProxySettings | None:
    try:
        return proxy_settings(table)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _check_server_table(table: Any, path: str | None) -> None:
    """ValueError naming the file and the key: unknown keys, values of the wrong type, a port
    out of range (like unknown ``[hub]`` keys, before anything starts)."""
    try:
        if not isinstance(table, dict):
            raise ValueError("[server] must be a table")
        unknown = set(table) - SERVER_KEYS
        if unknown:
            raise ValueError(f"unknown [server] setting(s): {unknown_keys(unknown, SERVER_KEYS)}")
        check_types(table, SERVER_TYPES, "[server]")
        if not 0 <= table.get("port", 0) <= 65535:
            raise ValueError(f"[server] port must be 0 to 65535, got {table['port']}")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _budget_limits(table: dict[str, Any], max_message_size: int) -> BudgetLimits:
    """The memory budget settings of ``[server]`` (ValueError, with their names, if bad).

    Those not set follow ``max_message_size`` (:meth:`BudgetLimits.for_message_size`: 1 MiB,
    4 MiB, 16 MiB, 32 MiB up to 384 KiB messages), so that raising the message limit alone
    never makes legal messages stall or be refused."""
    derived = BudgetLimits.for_message_size(max_message_size)
    values = {
        field: int(table[key]) if key in table else getattr(derived, field)
        for key, field in BUDGET_KEYS.items()
    }
    try:
        return BudgetLimits(**values)
    except ValueError:
        raise ValueError(
            "[server] need 0 < bytes_high_per_connection <= max_bytes_per_connection and "
            "0 < bytes_high_per_ip <= max_bytes_per_ip (defaults 1 MiB, 4 MiB, 16 MiB, 32 MiB)"
        ) from None


def front_door_changes(old: Settings, new: Settings) -> list[str]:
    """The ``[server]`` limits and deadlines whose value differs, by their TOML names."""
    changed = [k for k in LIMIT_KEYS if getattr(old.limits, k) != getattr(new.limits, k)]
    changed += [
        key
        for key, name in BUDGET_KEYS.items()
        if getattr(old.budget_limits, name) != getattr(new.budget_limits, name)
    ]
    changed += [
        key
        for key in ("max_message_size", "body_min_rate", *TIMEOUT_KEYS)
        if getattr(old, key) != getattr(new, key)
    ]
    return sorted(changed)


def pin_generated_secret(options: ServeOptions, settings: Settings) -> ServeOptions:
    """``options`` that keep a made-up demo token secret across reloads and workers."""
    if not settings.generated_secret:
        return options
    return options.replace(token_secret=settings.config.token_hmac_secret)
