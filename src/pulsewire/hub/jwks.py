"""Token keys from an identity provider's JWKS endpoint (RFC 7517), selected by ``kid``.

:class:`JwksKeys` fetches the key set, keeps it for ``ttl`` seconds, and fetches it again
when a token names a ``kid`` it does not hold (the provider rotated its keys). Fetches are
rate-limited and shared: at most one is in flight, and a fetch starts at least
``refetch_interval`` seconds after the previous one began; callers that need a fetch
meanwhile wait for that next one. So a flood of tokens with forged kids costs the provider
one request per interval, and a genuinely new key is still found (its token waits at most
one interval). While the endpoint cannot be reached the keys already fetched stay in use;
a kid that is not among them raises :class:`KeysUnavailable` (the token may well be good),
and the outage is logged once when it begins and once when it ends.

Only public keys are taken: RSA (RS256/384/512) and EC (ES256/384/512) keys with a
``kid``, ``use`` absent or ``"sig"``; symmetric (``oct``) and unusable keys are skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "Fetch",
    "Jwk",
    "JwksKeys",
    "KeysUnavailable",
    "TokenKeysCollector",
    "check_jwks_url",
    "fetch_url",
    "key_fits",
    "parse_jwks",
]

logger = logging.getLogger("pulsewire.hub")

MAX_JWKS_BYTES = 1 << 20
"""A key set larger than this is refused (a provider's is a few KiB)."""

_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", *_CURVES})
"""The ``alg`` values a public key (configured, or from a JWKS) may verify."""

Fetch = Callable[[str, float], Awaitable[bytes]]
"""``fetch(url, timeout)``: the key set's bytes; raises on any failure."""


class KeysUnavailable(Exception):
    """The key set could not be fetched and holds no key for the token's ``kid``."""


def key_fits(alg: str, key: Any) -> bool:
    """Whether ``key`` (a cryptography public key) is of the type ``alg`` needs: RSA for
    RS*, EC on the algorithm's own curve for ES* (ES256 is P-256 only)."""
    if alg.startswith("RS"):
        return isinstance(key, RSAPublicKey)
    curve = _CURVES.get(alg)
    return curve is not None and isinstance(key, EllipticCurvePublicKey) and key.curve.name == curve


@dataclass(frozen=True)
class Jwk:
    """One usable key of a key set."""

    kid: str
    key: Any
    """The cryptography public key object."""
    alg: str | None = None
    """The JWK's own ``alg`` member; when present, tokens must use exactly it."""

    def accepts(self, alg: str) -> bool:
        """Whether a token signed with ``alg`` may be verified with this key."""
        return (self.alg is None or self.alg == alg) and key_fits(alg, self.key)


def parse_jwks(body: bytes) -> dict[str, list[Jwk]]:
    """The usable keys of a JWKS document, by ``kid``; ValueError if it has none."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError('not a JWK set (no "keys" list)')
    keys: dict[str, list[Jwk]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC"):
            continue  # a symmetric key published at a URL would let anyone sign
        kid, alg, use = entry.get("kid"), entry.get("alg"), entry.get("use")
        if not isinstance(kid, str) or use not in (None, "sig"):
            continue
        if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
            continue
        try:
            key = jwt.PyJWK(entry).key
        except jwt.PyJWTError:
            continue  # bad parameters, an unsupported curve: skip the key, keep the set
        if isinstance(key, (RSAPublicKey, EllipticCurvePublicKey)):  # not private keys
            keys.setdefault(kid, []).append(Jwk(kid, key, alg))
    if not keys:
        raise ValueError("no usable signing key (RSA or EC, with a kid)")
    return keys


async def fetch_url(url: str, timeout: float) -> bytes:
    """GET ``url`` in a worker thread, within ``timeout`` seconds in all.

    Why urllib in a thread rather than an async HTTP client: it is what PyJWT's own
    PyJWKClient uses and needs no new dependency for a request made at most once per
    refetch interval; the thread keeps it off the event loop, the caller's ``wait_for``
    bounds the wait, and :func:`_get` bounds the thread itself by the same deadline."""
    return await asyncio.to_thread(_get, url, timeout)


def _get(url: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "pulsewire"}
    )
    # The URL is the operator's (http or https, checked by HubConfig), not a client's.
    with urllib.request.urlopen(request, timeout=timeout) as response:
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no complete answer within {timeout} s")
            chunk = response.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise ValueError(f"the key set is over {MAX_JWKS_BYTES} bytes")
            chunks.append(chunk)


def check_jwks_url(url: str) -> None:
    """ValueError unless ``url`` is an absolute http or https URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"token_jwks_url must be an http:// or https:// URL, not {url!r}")


class JwksKeys:
    """The keys of one JWKS URL, fetched when needed (see the module docstring).

    Times are the event loop's (``loop.time()``), so tests can move them forward."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        refetch_interval: float = 5.0,
        timeout: float = 5.0,
        fetch: Fetch = fetch_url,
    ) -> None:
        check_jwks_url(url)
        self.url = url
        self.ttl = ttl
        self.refetch_interval = refetch_interval
        self.timeout = timeout
        self._fetch = fetch
        self._keys: dict[str, list[Jwk]] = {}
        self._fetched_at: float | None = None
        """When the last successful fetch began."""
        self._attempted_at: float | None = None
        """When the last fetch began, successful or not."""
        self._error: str | None = None
        """Why the last fetch failed (None: it succeeded, or none was made)."""
        self._next: asyncio.Task[bool] | None = None
        self.fetches = 0
        """Fetches completed (successful or not)."""
        self.failures = 0
        """Fetches that failed."""

    def cached(self, kid: str) -> list[Jwk]:
        """The keys with ``kid`` from the last successful fetch, fresh or not (no fetch)."""
        return self._keys.get(kid, [])

    async def keys(self, kid: str) -> list[Jwk]:
        """The keys with ``kid``, fetching the set if it is older than ``ttl`` or lacks
        ``kid``. Raises :class:`KeysUnavailable` if it lacks ``kid`` and could not be
        fetched; an empty list means the provider does not publish ``kid`` (any more)."""
        now = asyncio.get_running_loop().time()
        known = self._keys.get(kid)
        if known:
            fresh = self._fetched_at is not None and now - self._fetched_at < self.ttl
            if fresh or not self._may_fetch(now):
                return known  # stale but cooling down (the provider may be down): keep it
        elif self._error is not None and not self._may_fetch(now):
            # The last fetch failed a moment ago: say so at once rather than wait.
            raise KeysUnavailable(self._error)
        if not await self._refresh():
            if known:
                return known  # keep the keys we have while the provider is unreachable
            raise KeysUnavailable(self._error or "the key set could not be fetched")
        return self._keys.get(kid, [])

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.refetch_interval

    async def _refresh(self) -> bool:
        """Join the next fetch (starting it if none is scheduled); shielded, so that one
        caller giving up (its session closed) does not cancel it for the others. False if
        it failed, or was cancelled by :meth:`close`."""
        if self._next is None:
            self._next = asyncio.ensure_future(self._fetch_when_allowed())
        task = self._next
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # closed under us: no keys, not our caller's cancellation
                return False
            raise

    async def _fetch_when_allowed(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            if self._attempted_at is not None:
                wait = self._attempted_at + self.refetch_interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            started = self._attempted_at = loop.time()
            try:
                body = await asyncio.wait_for(self._fetch(self.url, self.timeout), self.timeout)
                keys = parse_jwks(body)
            except Exception as exc:  # any failure: unreachable, HTTP error, bad document
                self.fetches += 1
                self._failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                return False
            self.fetches += 1
            if self._error is not None:
                logger.warning("token keys: %s is reachable again", self.url)
            self._keys, self._fetched_at, self._error = keys, started, None
            return True
        finally:
            self._next = None

    @property
    def failing(self) -> bool:
        """Whether the last fetch failed (the provider is unreachable, or answers badly)."""
        return self._error is not None

    def _failed(self, error: str) -> None:
        self.failures += 1
        if self._error is None:  # logged when the outage begins, not on every attempt
            logger.error(
                "token keys: cannot fetch %s (%s); keeping %d known key(s); tokens "
                "with other kids are refused as unverifiable (reconnect) until it answers",
                self.url,
                error,
                sum(len(keys) for keys in self._keys.values()),
            )
        else:
            logger.debug("token keys: %s still unreachable: %s", self.url, error)
        self._error = error

    def close(self) -> None:
        """Cancel a scheduled fetch (the hub is closing)."""
        if self._next is not None:
            self._next.cancel()
            self._next = None


class TokenKeysCollector(Collector):
    """Prometheus collector of the JWKS fetches of ``source()``, the hub's current keys
    (a reload replaces them): ``pulsewire_token_key_fetches_total{outcome="ok|error"}`` and
    ``pulsewire_token_keys_up`` (0 while the last fetch failed). Nothing without a JWKS."""

    def __init__(self, source: Callable[[], JwksKeys | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        keys = self.source()
        if keys is None:
            return
        fetches = CounterMetricFamily(
            "pulsewire_token_key_fetches",
            "Fetches of the token keys (token_jwks_url), by outcome",
            labels=["outcome"],
        )
        fetches.add_metric(["ok"], keys.fetches - keys.failures)
        fetches.add_metric(["error"], keys.failures)
        yield fetches
        yield GaugeMetricFamily(
            "pulsewire_token_keys_up",
            "0 while the last fetch of the token keys (token_jwks_url) failed, else 1",
            value=0 if keys.failing else 1,
        )
