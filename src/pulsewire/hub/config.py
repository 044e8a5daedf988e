"""Hub configuration: global settings and per-namespace channel options, loadable from TOML.

A channel name ``chat:lobby`` belongs to namespace ``chat``; a name without ``:`` uses the
default options (``[channel]`` in TOML). A ``#`` in a name limits it to the users listed
after it (``notifications:#42`` or ``dm:#42,17``): see :mod:`pulsewire.hub.channels`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .config_types import ConfigError, convert_table, unknown_keys
from .jwks import check_jwks_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ChannelOptions", "HubConfig", "load_config"]


@dataclass(frozen=True)
class ChannelOptions:
    """What a namespace's channels keep and who may do what in them."""

    presence: bool = False
    """Track who is subscribed (presence and presence_stats commands)."""
    join_leave: bool = False
    """Push join/leave events to subscribers."""
    history_size: int = 0
    """Keep this many last publications (0: no history, no recovery)."""
    history_ttl: float = 0.0
    """Seconds the history is kept after the last publication."""
    allow_subscribe: bool = True
    """Clients may subscribe (private channels still need a token or a grant)."""
    allow_publish: bool = False
    """Subscribed clients may publish (the server API always may)."""
    allow_presence: bool = True
    """Subscribers may ask who else is here."""
    allow_history: bool = True
    """Subscribers may read the history."""
    private: bool = False
    """Subscribing needs a subscription token or a channel grant in the connection token."""
    allow_anonymous: bool = False
    """Connections without a user may subscribe (when the hub admits anonymous connections)."""
    slow_consumer: str = "disconnect"
    """When a subscriber's queue is full: "disconnect" it (1013, it reconnects and recovers)
    or "drop" the publication for it (counted in pulsewire_queue_drops)."""

    def __post_init__(self) -> None:
        if self.slow_consumer not in ("disconnect", "drop"):
            raise ValueError('slow_consumer must be "disconnect" or "drop"')

    @property
    def history(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


@dataclass(frozen=True)
class HubConfig:
    """Hub-wide settings (the ``[hub]`` table, with ``[channel]`` and ``[namespaces.*]``)."""

    node_name: str = ""
    engine: str = "memory"
    """``memory``, ``redis://host:port/db``, ``redis+sentinel://host:port,.../master/db`` or
    ``nats://host:port``."""
    engine_prefix: str = "pulsewire"
    """Key/subject prefix, so several hubs (or tests) can share one Redis or NATS."""
    token_hmac_secret: str | None = None
    token_rsa_public_key: str | None = None
    """PEM text, or a path to a PEM file, for RS256 tokens."""
    token_ecdsa_public_key: str | None = None
    """PEM text, or a path to a PEM file, for ES256 tokens (a P-256 key; a P-384 or P-521
    key verifies ES384 or ES512 instead)."""
    token_jwks_url: str | None = None
    """An identity provider's JWKS endpoint (http or https): RS256/384/512 and
    ES256/384/512 tokens are verified with its key named by the token's ``kid``."""
    token_jwks_ttl: float = 300.0
    """Seconds the fetched key set is used before it is fetched again."""
    token_jwks_refetch_interval: float = 5.0
    """Least seconds between two fetches of the key set (a token with an unknown ``kid``
    waits for the next one; forged kids cannot make the node fetch more often)."""
    token_jwks_timeout: float = 5.0
    """Seconds a fetch of the key set may take in all."""
    token_audience: str | None = None
    token_issuer: str | None = None
    allow_anonymous: bool = False
    """Admit connections without a token (their user id is empty)."""
    connect_timeout: float = 10.0
    """A client must send its connect command within this many seconds."""
    presence_ttl: float = 60.0
    presence_update_interval: float = 20.0
    history_meta_ttl: float = 30 * 24 * 3600.0
    max_channels_per_connection: int = 128
    client_queue_max_bytes: int = 1 << 20
    """Bytes queued for one client before it counts as a slow consumer."""
    client_messages_per_second: float = 100.0
    """Commands per second per client (the old name of ``client_commands_per_second``)."""
    client_messages_burst: float = 200.0
    """The old name of ``client_commands_burst``."""
    client_bytes_per_second: float = 1 << 20
    client_bytes_burst: float = 4 << 20
    rate_limit_policy: str = "disconnect"
    """Over a client rate limit: "disconnect" (1008 with a reason) or "drop" the command
    (answered with error 111 when it has an id, counted in pulsewire_rate_limited)."""
    api_key: str | None = None
    """Key for the server HTTP API (``Authorization: apikey KEY``); no key: API disabled."""
    channel: ChannelOptions = field(default_factory=ChannelOptions)
    namespaces: dict[str, ChannelOptions] = field(default_factory=dict)
    client_commands_per_second: float | None = None
    """Commands per second per client, counted one per command (several may share a
    message); None: ``client_messages_per_second``, the older name kept as an alias."""
    client_commands_burst: float | None = None
    """Commands a client may send at once; also the most commands one message may carry.
    None: ``client_messages_burst``."""
    auth_failures_burst: float = 10
    """Failed authentications an address may make before it is refused (429 / 4008);
    0 turns the guard off."""
    auth_failures_refill: float = 6.0
    """Seconds after which one more failure is allowed (10 a minute once the burst is used)."""
    auth_failures_max_addresses: int = 65536
    """Addresses tracked by the failed-authentication guard (the oldest are forgotten)."""
    auth_failures_trusted_proxies: tuple[str, ...] = ()
    """Proxy addresses or networks whose ``X-Forwarded-For`` names the client for the guard."""
    idempotency_window: float = 300.0
    """Seconds a publish's ``idempotency_key`` is remembered, per channel, on every node: a
    retry with the same key within it returns the first result and publishes nothing."""
    node_announce_interval: float = 5.0
    """Seconds between a node's announcements to the others; a node silent for 3 intervals
    is declared dead (its presence removed, leave pushed for its clients)."""
    overload_lag: float = 0.5
    """Seconds a node may be behind on delivery (the oldest publication not yet handed to
    every local subscriber, or its event loop running late) before publishers are held back
    (backpressure, :mod:`pulsewire.hub.overload`); 0 turns backpressure off."""
    overload_wait: float = 2.0
    """Seconds a publish waits for a node behind on its channel to catch up before it is
    refused with error 115 (0: refused at once)."""

    def __post_init__(self) -> None:
        if self.rate_limit_policy not in ("disconnect", "drop"):
            raise ValueError('rate_limit_policy must be "disconnect" or "drop"')
        if not 0.001 <= self.idempotency_window <= 30 * 24 * 3600:
            raise ValueError("idempotency_window must be between 0.001 s and 30 days")
        if isinstance(self.auth_failures_trusted_proxies, str):
            raise ValueError("auth_failures_trusted_proxies is a list of addresses")
        object.__setattr__(
            self, "auth_failures_trusted_proxies", tuple(self.auth_failures_trusted_proxies)
        )
        if not 0 < self.node_announce_interval < float("inf"):
            raise ValueError("node_announce_interval must be a positive number of seconds")
        if not 0 <= self.overload_lag < float("inf"):
            raise ValueError("overload_lag must be a number of seconds >= 0 (0: off)")
        if not 0 <= self.overload_wait < float("inf"):
            raise ValueError("overload_wait must be a number of seconds >= 0")
        if self.token_jwks_url is not None:
            check_jwks_url(self.token_jwks_url)
        if not (self.token_jwks_ttl > 0 and self.token_jwks_timeout > 0):
            raise ValueError("token_jwks_ttl and token_jwks_timeout must be positive")
        if not 0 <= self.token_jwks_refetch_interval < float("inf"):
            raise ValueError("token_jwks_refetch_interval must be a number of seconds >= 0")

    @property
    def command_rate(self) -> tuple[float, float]:
        """(commands per second, burst) per client, new names first, old names otherwise."""
        rate = self.client_commands_per_second
        burst = self.client_commands_burst
        return (
            self.client_messages_per_second if rate is None else rate,
            self.client_messages_burst if burst is None else burst,
        )

    def replace(self, **changes: Any) -> HubConfig:
        return dataclasses.replace(self, **changes)


def config_from_dict(data: dict[str, Any]) -> HubConfig:
    """Build a HubConfig from the ``[hub]``-level mapping (channel/namespaces included);
    :class:`~pulsewire.hub.config_types.ConfigError` (a ValueError) names the table and the
    key that is unknown or whose value has the wrong type."""
    data = dict(data)
    channel = convert_table(data.pop("channel", {}), ChannelOptions, ("channel",))
    tables = data.pop("namespaces", {})
    if not isinstance(tables, dict):
        raise ConfigError("[namespaces] must be a table of tables ([namespaces.NAME])")
    namespaces = {
        name: convert_table(table, ChannelOptions, ("namespaces", name))
        for name, table in tables.items()
    }
    config = convert_table(data, HubConfig, ("hub",))
    keys = {}
    for name in ("token_rsa_public_key", "token_ecdsa_public_key"):
        key = getattr(config, name)
        if isinstance(key, str) and "BEGIN" not in key and os.path.exists(key):
            with open(key, encoding="utf-8") as fh:
                keys[name] = fh.read()
    return config.replace(channel=channel, namespaces=namespaces, **keys)


SERVER_SECTIONS = ("server", "proxy")
"""The sections of pulsewire.toml read by the server layer (``pulsewire serve``)."""


def load_config(path: str) -> tuple[HubConfig, dict[str, Any]]:
    """Read a pulsewire.toml: returns the hub config and the ``[server]`` table as a dict."""
    config, tables = load_config_tables(path)
    return config, tables["server"]


def load_config_tables(path: str) -> tuple[HubConfig, dict[str, dict[str, Any]]]:
    """Read a pulsewire.toml: the hub config and each of :data:`SERVER_SECTIONS` (a dict,
    empty when absent) by name. ValueError starts with the file's name."""
    doc = read_toml(path)
    try:
        return config_from_document(doc)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_toml(path: str) -> dict[str, Any]:
    """The TOML document at ``path``; ValueError naming the file if it is not valid TOML."""
    with open(path, "rb") as fh:
        try:
            doc: dict[str, Any] = tomllib.load(fh)
            return doc
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None


TABLES = ("hub", "channel", "namespaces", *SERVER_SECTIONS)
"""The top-level tables of pulsewire.toml."""


def config_from_document(doc: dict[str, Any]) -> tuple[HubConfig, dict[str, dict[str, Any]]]:
    """The hub config and the :data:`SERVER_SECTIONS` tables (unchecked dicts) of a parsed
    pulsewire.toml; :class:`~pulsewire.hub.config_types.ConfigError` if bad."""
    doc = dict(doc)
    tables = {name: doc.pop(name, {}) for name in SERVER_SECTIONS}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table", (name,))
    hub = doc.pop("hub", {})
    if not isinstance(hub, dict):
        raise ConfigError("[hub] must be a table", ("hub",))
    hub = dict(hub)
    for key in ("channel", "namespaces"):
        if key in doc:
            hub[key] = doc.pop(key)
    if doc:
        raise ConfigError(f"unknown table(s): {unknown_keys(doc, TABLES)}")
    return config_from_dict(hub), tables
