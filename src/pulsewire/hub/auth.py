"""Authentication: tokens, constant-time secret checks, and the failed-authentication guard.

Connection token claims: ``sub`` (user id, required), ``exp`` (optional expiry), ``info``
(shown in presence), ``channels`` (grants: channel names, or patterns ending in ``*``, the
connection may subscribe to even when private), ``subs`` (server-side subscriptions: channels
the hub subscribes the connection to at connect). Subscription token claims: ``sub`` (must be
the connection's user), ``channel``, ``exp``, ``info`` (channel-specific info). The two
kinds cannot stand in for each other: a token with a ``channel`` claim cannot connect, one
without cannot subscribe.

:class:`AuthGuard` counts failed authentications per client address (API key, ``/admin``
password, connection and subscription tokens); an address over its budget is refused before
anything it sends is checked (HTTP 429 + ``Retry-After``, or disconnect code 4008).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .config import HubConfig
from .errors import Disconnect, DisconnectCode, ErrorCode, HubError
from .jwks import ASYMMETRIC_ALGORITHMS, Fetch, Jwk, JwksKeys, KeysUnavailable, fetch_url
from .ratelimit import KeyedBuckets

__all__ = [
    "AUTH_KINDS",
    "AuthGuard",
    "Credentials",
    "TokenVerifier",
    "grant_allows",
    "secret_matches",
]

AUTH_KINDS = ("api", "admin", "token")
"""What failed: the HTTP API key, the /admin password, a connection or subscription token."""


def secret_matches(given: str | bytes, expected: str | bytes) -> bool:
    """Whether ``given`` equals ``expected``, in time that depends on neither.

    ``hmac.compare_digest`` on the raw values still returns early when the lengths differ,
    which tells an attacker the secret's length; comparing SHA-256 digests (always 32 bytes)
    leaks nothing but the (useless) fact that the digests differ."""
    if isinstance(given, str):
        given = given.encode("utf-8", "surrogatepass")
    if isinstance(expected, str):
        expected = expected.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


@dataclass(frozen=True)
class Credentials:
    """Who a connection is, from its token or the embedding application's hook."""

    user: str
    expires_at: float | None = None
    info: Any = None
    channels: tuple[str, ...] = ()
    """Grants: channels (or ``*`` patterns) the connection may subscribe to."""
    subs: tuple[str, ...] = ()
    """Server-side subscriptions: channels the server subscribes the connection to itself."""
    extra: dict[str, Any] = field(default_factory=dict)


def grant_allows(grants: tuple[str, ...], channel: str) -> bool:
    return any(
        g == channel or (g.endswith("*") and fnmatch.fnmatchcase(channel, g)) for g in grants
    )


_PUBLIC_KEY_SETTINGS = (
    ("token_rsa_public_key", ("RS256",)),
    ("token_ecdsa_public_key", ("ES256", "ES384", "ES512")),  # the key's curve decides
)


class TokenVerifier:
    """Verifies tokens with the keys configured in :class:`HubConfig`.

    The token header's ``alg`` picks the key, and must fit it: HS256 the HMAC secret, RS256
    the RSA key, ES256 (ES384, ES512) the EC key of that curve; RS256/384/512 and
    ES256/384/512 tokens with a ``kid`` the key of that kid from ``token_jwks_url`` (see
    :class:`~pulsewire.hub.jwks.JwksKeys`). Anything else (``none``, HS256 with a public
    key, an RSA kid with ES256, ...) is refused as an invalid token.

    :meth:`verify_connection` and :meth:`verify_subscription` may fetch JWKS keys (without
    blocking the event loop); :meth:`connection` and :meth:`subscription` use only keys
    already at hand (a JWKS kid not fetched yet counts as keys unavailable).
    """

    def __init__(self, config: HubConfig, *, fetch: Fetch | None = None) -> None:
        self._keys: dict[str, Any] = {}
        """Configured keys by the one ``alg`` each verifies."""
        if config.token_hmac_secret:
            self._keys["HS256"] = config.token_hmac_secret
        for name, algorithms in _PUBLIC_KEY_SETTINGS:
            text = getattr(config, name)
            if text:
                alg, key = _public_key(text, name, algorithms)
                self._keys[alg] = key
        self._jwks: JwksKeys | None = None
        if config.token_jwks_url:
            self._jwks = JwksKeys(
                config.token_jwks_url,
                ttl=config.token_jwks_ttl,
                refetch_interval=config.token_jwks_refetch_interval,
                timeout=config.token_jwks_timeout,
                fetch=fetch or fetch_url,
            )
        self._audience = config.token_audience
        self._issuer = config.token_issuer

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._jwks is not None

    @property
    def jwks(self) -> JwksKeys | None:
        """The JWKS keys, when ``token_jwks_url`` is configured."""
        return self._jwks

    def close(self) -> None:
        """Stop a scheduled JWKS fetch (the hub is closing)."""
        if self._jwks is not None:
            self._jwks.close()

    # -------------------------------------------------------------------- decoding

    def _jwks_kid(self, token: str) -> tuple[str, str | None]:
        """The header's ``alg``, and its ``kid`` when the JWKS is where the key comes from."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise jwt.InvalidTokenError(f"malformed token: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str):
            raise jwt.InvalidAlgorithmError("the token header has no alg")
        if self._jwks is not None and alg in ASYMMETRIC_ALGORITHMS and kid is not None:
            if not isinstance(kid, str):
                raise jwt.InvalidTokenError("the token header's kid is not a string")
            return alg, kid
        return alg, None

    def _verify(self, token: str, alg: str, key: Any) -> dict[str, Any]:
        options = {"require": ["sub"], "verify_aud": self._audience is not None}
        return jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=self._audience,
            issuer=self._issuer,
            options=options,  # type: ignore[arg-type]
        )

    def _configured(self, token: str, alg: str) -> dict[str, Any]:
        key = self._keys.get(alg)
        if key is None:
            raise jwt.InvalidAlgorithmError(f"tokens signed with {alg!r} are not accepted")
        return self._verify(token, alg, key)

    def _with_jwk(self, token: str, alg: str, kid: str, keys: list[Jwk]) -> dict[str, Any]:
        if not keys:
            raise jwt.InvalidKeyError(f"the key set has no key {kid[:64]!r}")
        for jwk in keys:
            if jwk.accepts(alg):
                return self._verify(token, alg, jwk.key)
        raise jwt.InvalidAlgorithmError(f"key {kid[:64]!r} does not verify {alg!r} tokens")

    def _decode(self, token: str) -> dict[str, Any]:
        alg, kid = self._jwks_kid(token)
        if kid is None or self._jwks is None:
            return self._configured(token, alg)
        keys = self._jwks.cached(kid)
        if not keys:
            raise KeysUnavailable(f"key {kid[:64]!r} not fetched yet")
        return self._with_jwk(token, alg, kid, keys)

    async def _decode_async(self, token: str) -> dict[str, Any]:
        alg, kid = self._jwks_kid(token)
        if kid is None or self._jwks is None:
            return self._configured(token, alg)
        return self._with_jwk(token, alg, kid, await self._jwks.keys(kid))

    # ------------------------------------------------------------------ connection

    def connection(self, token: str) -> Credentials:
        """Verify a connection token with the keys at hand; raises Disconnect (expired or
        keys unavailable: reconnect; forged: do not)."""
        self._check_enabled()
        try:
            claims = self._decode(token)
        except Exception as exc:
            raise _connection_refusal(exc) from None
        return _credentials(claims)

    async def verify_connection(self, token: str) -> Credentials:
        """:meth:`connection`, fetching the JWKS key when needed."""
        self._check_enabled()
        try:
            claims = await self._decode_async(token)
        except Exception as exc:
            raise _connection_refusal(exc) from None
        return _credentials(claims)

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise Disconnect(
                DisconnectCode.INVALID_TOKEN, "this hub accepts no tokens (no key configured)"
            )

    # ---------------------------------------------------------------- subscription

    def subscription(self, token: str, *, user: str, channel: str) -> dict[str, Any]:
        """Verify a subscription token for ``channel`` with the keys at hand; raises
        HubError on any mismatch (108 when the keys are unavailable)."""
        if not self.enabled:
            raise HubError(ErrorCode.PERMISSION_DENIED, "this hub accepts no tokens")
        try:
            claims = self._decode(token)
        except Exception as exc:
            raise _subscription_refusal(exc) from None
        return _subscription_claims(claims, user, channel)

    async def verify_subscription(self, token: str, *, user: str, channel: str) -> dict[str, Any]:
        """:meth:`subscription`, fetching the JWKS key when needed."""
        if not self.enabled:
            raise HubError(ErrorCode.PERMISSION_DENIED, "this hub accepts no tokens")
        try:
            claims = await self._decode_async(token)
        except Exception as exc:
            raise _subscription_refusal(exc) from None
        return _subscription_claims(claims, user, channel)


def _public_key(text: str, name: str, algorithms: tuple[str, ...]) -> tuple[str, Any]:
    """The first of ``algorithms`` whose PyJWT loader takes ``text`` (PEM, or OpenSSH public
    key), with the public key; ValueError naming the setting if none does."""
    for alg in algorithms:
        try:
            key = jwt.get_algorithm_by_name(alg).prepare_key(text)
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        public = getattr(key, "public_key", None)  # a private key given: its public half
        return alg, public() if callable(public) else key
    raise ValueError(f"{name} is not a PEM public key of the right type (nor a path to one)")


def _connection_refusal(exc: Exception) -> Disconnect:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return Disconnect(DisconnectCode.TOKEN_EXPIRED, "token expired")
    if isinstance(exc, KeysUnavailable):
        return Disconnect(
            DisconnectCode.KEYS_UNAVAILABLE, f"token keys unavailable, retry later: {exc}"
        )
    if isinstance(exc, jwt.PyJWTError):
        return Disconnect(DisconnectCode.INVALID_TOKEN, f"invalid token: {exc}")
    raise exc


def _subscription_refusal(exc: Exception) -> HubError:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return HubError(ErrorCode.TOKEN_EXPIRED, "subscription token expired")
    if isinstance(exc, KeysUnavailable):
        return HubError(ErrorCode.NOT_AVAILABLE, f"token keys unavailable, retry later: {exc}")
    if isinstance(exc, jwt.PyJWTError):
        return HubError(ErrorCode.PERMISSION_DENIED, f"invalid subscription token: {exc}")
    raise exc


def _credentials(claims: dict[str, Any]) -> Credentials:
    if "channel" in claims:
        # A subscription token is signed with the same key: without this check, one
        # issued to let a user into one channel would also log them in (Centrifugo
        # refuses it the same way).
        raise Disconnect(
            DisconnectCode.INVALID_TOKEN, "invalid token: a subscription token cannot connect"
        )
    channels = claims.get("channels") or ()
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
        raise Disconnect(
            DisconnectCode.INVALID_TOKEN, "invalid token: channels must be a list of strings"
        )
    subs = claims.get("subs") or ()
    if not isinstance(subs, (list, tuple)) or not all(isinstance(c, str) for c in subs):
        raise Disconnect(
            DisconnectCode.INVALID_TOKEN, "invalid token: subs must be a list of strings"
        )
    exp = claims.get("exp")
    return Credentials(
        user=str(claims["sub"]),
        expires_at=float(exp) if exp is not None else None,
        info=claims.get("info"),
        channels=tuple(channels),
        subs=tuple(dict.fromkeys(subs)),
        extra={k: v for k, v in claims.items() if k not in _HUB_CLAIMS},
    )


_HUB_CLAIMS = frozenset({"sub", "exp", "info", "channels", "subs"})
"""Connection token claims the hub reads (the others stay in ``Credentials.extra``)."""


def _subscription_claims(claims: dict[str, Any], user: str, channel: str) -> dict[str, Any]:
    if str(claims.get("sub", "")) != user or claims.get("channel") != channel:
        raise HubError(
            ErrorCode.PERMISSION_DENIED, "subscription token is for another user or channel"
        )
    return claims


class AuthGuard:
    """Failed authentications per client address, shared by every way in.

    Each failure takes one token from the address's bucket (``burst`` tokens, one more every
    ``refill`` seconds). While the bucket is empty, :meth:`retry_after` is positive and the
    callers refuse the attempt *before* checking what it carries, so guessing is limited to
    ``burst`` tries, then one per ``refill`` seconds, whatever the connection or transport.
    Success does not give tokens back: one valid credential must not launder guesses.

    Addresses: an IPv6 client usually owns a whole /64, so IPv6 addresses count by /64
    prefix (else every guess could come from a fresh address). Behind a reverse proxy every
    request comes from the proxy: list it in ``trusted_proxies`` and the client address is
    read from the last ``X-Forwarded-For`` entry the proxy appended. At most
    ``max_addresses`` are tracked (the oldest are forgotten beyond that), which bounds the
    memory an attacker with many addresses can make it hold. ``burst=0`` turns it off.
    """

    def __init__(
        self,
        burst: float = 10,
        refill: float = 6.0,
        *,
        max_addresses: int = 65536,
        trusted_proxies: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 0 or refill <= 0 or max_addresses < 1:
            raise ValueError("auth_failures: burst >= 0, refill > 0 and max_addresses >= 1")
        self.burst = burst
        self.refill = refill
        self._buckets = KeyedBuckets(1.0 / refill, burst, max_addresses, clock)
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.failures = dict.fromkeys(AUTH_KINDS, 0)
        """Failed authentications by kind (``pulsewire_auth_failures_total``)."""
        self.refused = dict.fromkeys(AUTH_KINDS, 0)
        """Attempts refused unchecked, their address being over (``pulsewire_auth_refused``)."""

    @classmethod
    def from_config(cls, config: HubConfig) -> AuthGuard:
        return cls(
            config.auth_failures_burst,
            config.auth_failures_refill,
            max_addresses=config.auth_failures_max_addresses,
            trusted_proxies=config.auth_failures_trusted_proxies,
        )

    @property
    def enabled(self) -> bool:
        return self.burst > 0

    def __len__(self) -> int:
        """Addresses currently tracked."""
        return len(self._buckets)

    def client(self, remote: str, headers: Iterable[tuple[str, str]] = ()) -> str:
        """The key an attempt counts under: the peer's address (IPv6: its /64), or, from a
        trusted proxy, the client address the proxy appended to ``X-Forwarded-For``."""
        address = _parse_ip(remote)
        if address is not None and self._proxies and any(address in p for p in self._proxies):
            forwarded = [v for k, v in headers if k.lower() == "x-forwarded-for"]
            if forwarded:
                # Only the last entry was written by our proxy; earlier ones came from the
                # client and prove nothing.
                last = _parse_ip(forwarded[-1].rsplit(",", 1)[-1].strip())
                if last is not None:
                    address = last
        if address is None:
            return remote
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` may try again; 0 if it may try now."""
        if not self.enabled:
            return 0
        wait = self._buckets.wait_time(key)
        return 0 if wait <= 0 else max(1, math.ceil(wait))

    def check(self, key: str, kind: str) -> int:
        """:meth:`retry_after`, counting the attempt as refused when it is positive."""
        wait = self.retry_after(key)
        if wait:
            self.refused[kind] += 1
        return wait

    def failed(self, key: str, kind: str) -> None:
        """Record one failed authentication of ``kind`` from ``key``."""
        self.failures[kind] += 1
        if self.enabled:
            self._buckets.take(key)

    def collector(self) -> Collector:
        """Prometheus collector of :attr:`failures` and :attr:`refused`."""
        return _GuardCollector(self)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _GuardCollector(Collector):
    def __init__(self, guard: AuthGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "pulsewire_auth_failures",
            "Failed authentications (api key, admin password, tokens), by kind",
            labels=["kind"],
        )
        refused = CounterMetricFamily(
            "pulsewire_auth_refused",
            "Authentication attempts refused unchecked: too many failures from the address",
            labels=["kind"],
        )
        for kind in AUTH_KINDS:
            failures.add_metric([kind], self.guard.failures[kind])
            refused.add_metric([kind], self.guard.refused[kind])
        yield failures
        yield refused
