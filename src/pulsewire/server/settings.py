"""What a node runs with: :class:`ServeOptions` (the command line's options, as a mapping
or a typed object) resolved with the ``PULSEWIRE_*`` environment variables
(:mod:`pulsewire.server.environment`), the config file (its tables checked by type:
:mod:`pulsewire.hub.config_types`) and defaults into :class:`Settings`.

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
from typing import Annotated, Any

from msgspec import Meta

from ..aio.budget import BudgetLimits
from ..hub.config import ChannelOptions, HubConfig, config_from_document, read_toml
from ..hub.config_types import ConfigError, convert_table, field_types
from .environment import read_environment
from .limits import ConnectionLimits
from .proxy import PROXY_TYPES, ProxySettings, proxy_settings

__all__ = [
    "BUDGET_KEYS",
    "DEFAULT_DRAIN_TIMEOUT",
    "FRONT_DOOR_FIELDS",
    "LIMIT_KEYS",
    "SERVER_KEYS",
    "SERVER_TYPES",
    "TIMEOUT_KEYS",
    "ServeOptions",
    "ServerTable",
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
    overload_lag: float | None = None
    overload_wait: float | None = None

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
Seconds = Annotated[float, Meta(gt=0)]
Count = Annotated[int, Meta(ge=0)]


@dataclass(frozen=True)
class ServerTable:
    """The ``[server]`` table as written (None: not set, a flag or the default decides),
    checked by type and range when the file is read (see docs/configuration.md)."""

    host: str | None = None
    port: Annotated[int, Meta(ge=0, le=65535)] | None = None
    allowed_origins: tuple[str, ...] | None = None
    demo: bool | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    workers: Annotated[int, Meta(ge=1)] | None = None
    drain_timeout: Annotated[float, Meta(ge=0)] | None = None
    max_message_size: Annotated[int, Meta(gt=0)] | None = None
    body_min_rate: Count | None = None
    admin_password: str | None = None
    max_connections: Count | None = None
    max_connections_per_ip: Count | None = None
    connections_per_second_per_ip: float | None = None
    connections_burst_per_ip: float | None = None
    bytes_high_per_connection: int | None = None
    max_bytes_per_connection: int | None = None
    bytes_high_per_ip: int | None = None
    max_bytes_per_ip: int | None = None
    head_timeout: Seconds | None = None
    body_timeout: Seconds | None = None
    idle_timeout: Seconds | None = None
    send_timeout: Seconds | None = None
    longpoll_timeout: Seconds | None = None
    longpoll_idle_timeout: Seconds | None = None

    def given(self, *keys: str) -> dict[str, Any]:
        """The ``keys`` that are set, with their values."""
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


SERVER_TYPES: dict[str, Any] = field_types(ServerTable)
"""The settings of the ``[server]`` table and their types (checked when the file is read)."""
SERVER_KEYS = frozenset(SERVER_TYPES)
"""The settings of the ``[server]`` table."""
ENV_TABLES: dict[str, Any] = {
    "hub": HubConfig,
    "server": ServerTable,
    "channel": ChannelOptions,
    "namespaces": dict[str, ChannelOptions],
    "proxy": PROXY_TYPES,
}
"""The tables of pulsewire.toml that ``PULSEWIRE_*`` variables set (see
:mod:`pulsewire.server.environment`): ``[hub]`` and ``[server]`` keys by their own names."""
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
    environment: tuple[str, ...] = field(default=(), compare=False)
    """The ``PULSEWIRE_*`` variables that set a config key (names only: values may be
    secret)."""
    unknown_environment: tuple[str, ...] = field(default=(), compare=False)
    """``PULSEWIRE_*`` variables that set nothing (typos?), for a warning at start."""
    generated_secret: bool = field(default=False, compare=False)
    """The demo's token secret was made up here (pin it before starting more processes)."""


def load_settings(
    options: ServeOptions | Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Settings:
    """``options`` (first), the ``PULSEWIRE_*`` variables of ``environ`` (default:
    ``os.environ``), the config file ``options`` name, then defaults; raises ValueError
    (naming the file or the variable, the table and the key) or OSError if bad."""
    args = options if isinstance(options, ServeOptions) else ServeOptions.from_mapping(options)
    env = read_environment(os.environ if environ is None else environ, ENV_TABLES)
    doc = env.over(read_toml(args.config) if args.config else {})
    try:
        config, tables = config_from_document(doc)
        table = convert_table(tables["server"], ServerTable, ("server",))
        proxy = proxy_settings(tables["proxy"])
    except ConfigError as exc:
        raise ValueError(f"{env.source(exc, args.config)}: {exc}") from None
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
    if args.overload_lag is not None:
        changes["overload_lag"] = args.overload_lag
    if args.overload_wait is not None:
        changes["overload_wait"] = args.overload_wait
    config = config.replace(**changes)
    host = args.host or table.host or "127.0.0.1"
    port = next(p for p in (args.port, table.port, 8000) if p is not None)
    origins = next(o for o in (args.allowed_origins, table.allowed_origins, ()) if o is not None)
    demo = args.demo or bool(table.demo)
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
    workers = args.workers if args.workers is not None else table.workers
    if workers is not None and workers < 1:
        raise ValueError("workers must be at least 1")
    drain_timeout = args.drain_timeout
    if drain_timeout is None:
        drain_timeout = (
            DEFAULT_DRAIN_TIMEOUT if table.drain_timeout is None else table.drain_timeout
        )
    if drain_timeout < 0:
        raise ValueError("drain_timeout must not be negative")
    max_message_size = table.max_message_size or 65536
    return Settings(
        config=config,
        admin_password=table.admin_password,
        proxy=proxy,
        limits=ConnectionLimits(**table.given(*LIMIT_KEYS)),
        budget_limits=_budget_limits(table, max_message_size),
        max_message_size=max_message_size,
        body_min_rate=1024 if table.body_min_rate is None else table.body_min_rate,
        **{**TIMEOUT_KEYS, **table.given(*TIMEOUT_KEYS)},
        host=host,
        port=port,
        allowed_origins=tuple(origins),
        demo=demo,
        tls_cert=args.tls_cert or table.tls_cert,
        tls_key=args.tls_key or table.tls_key,
        workers=workers,
        drain_timeout=drain_timeout,
        config_file=args.config,
        environment=env.used,
        unknown_environment=env.unknown,
        generated_secret=generated,
    )


def _budget_limits(table: ServerTable, max_message_size: int) -> BudgetLimits:
    """The memory budget settings of ``[server]`` (ValueError, with their names, if bad).

    Those not set follow ``max_message_size`` (:meth:`BudgetLimits.for_message_size`: 1 MiB,
    4 MiB, 16 MiB, 32 MiB up to 384 KiB messages), so that raising the message limit alone
    never makes legal messages stall or be refused."""
    derived = BudgetLimits.for_message_size(max_message_size)
    values = {
        field: getattr(table, key) if getattr(table, key) is not None else getattr(derived, field)
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
