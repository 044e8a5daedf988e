"""Connection and subscription tokens (JWT, HS256 or RS256, verified with PyJWT).

Connection token claims: ``sub`` (user id, required), ``exp`` (optional expiry), ``info``
(shown in presence), ``channels`` (grants: channel names, or patterns ending in ``*``, the
connection may subscribe to even when private). Subscription token claims: ``sub`` (must be
the connection's user), ``channel``, ``exp``, ``info`` (channel-specific info).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import jwt

from .config import HubConfig
from .errors import Disconnect, DisconnectCode, ErrorCode, HubError

__all__ = ["Credentials", "TokenVerifier", "grant_allows"]


@dataclass(frozen=True)
class Credentials:
    """Who a connection is, from its token or the embedding application's hook."""

    user: str
    expires_at: float | None = None
    info: Any = None
    channels: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def grant_allows(grants: tuple[str, ...], channel: str) -> bool:
    return any(
        g == channel or (g.endswith("*") and fnmatch.fnmatchcase(channel, g)) for g in grants
    )


class TokenVerifier:
    """Verifies tokens with the keys configured in :class:`HubConfig`."""

    def __init__(self, config: HubConfig) -> None:
        self._keys: list[tuple[str, Any]] = []
        if config.token_hmac_secret:
            self._keys.append(("HS256", config.token_hmac_secret))
        if config.token_rsa_public_key:
            self._keys.append(("RS256", config.token_rsa_public_key))
        self._audience = config.token_audience
        self._issuer = config.token_issuer

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise jwt.InvalidTokenError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        for key_alg, key in self._keys:
            if key_alg == alg:
                options = {"require": ["sub"], "verify_aud": self._audience is not None}
                return jwt.decode(
                    token,
                    key,
                    algorithms=[key_alg],
                    audience=self._audience,
                    issuer=self._issuer,
                    options=options,  # type: ignore[arg-type]
                )
        raise jwt.InvalidAlgorithmError(f"tokens signed with {alg!r} are not accepted")

    def connection(self, token: str) -> Credentials:
        """Verify a connection token; raises Disconnect (expired: reconnect; forged: do not)."""
        if not self._keys:
            raise Disconnect(
                DisconnectCode.INVALID_TOKEN, "this hub accepts no tokens (no key configured)"
            )
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise Disconnect(DisconnectCode.TOKEN_EXPIRED, "token expired") from None
        except jwt.PyJWTError as exc:
            raise Disconnect(DisconnectCode.INVALID_TOKEN, f"invalid token: {exc}") from None
        channels = claims.get("channels") or ()
        if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) for c in channels):
            raise Disconnect(
                DisconnectCode.INVALID_TOKEN, "invalid token: channels must be a list of strings"
            )
        exp = claims.get("exp")
        return Credentials(
            user=str(claims["sub"]),
            expires_at=float(exp) if exp is not None else None,
            info=claims.get("info"),
            channels=tuple(channels),
            extra={k: v for k, v in claims.items() if k not in ("sub", "exp", "info", "channels")},
        )

    def subscription(self, token: str, *, user: str, channel: str) -> dict[str, Any]:
        """Verify a subscription token for ``channel``; raises HubError on any mismatch."""
        if not self._keys:
            raise HubError(ErrorCode.PERMISSION_DENIED, "this hub accepts no tokens")
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise HubError(ErrorCode.TOKEN_EXPIRED, "subscription token expired") from None
        except jwt.PyJWTError as exc:
            raise HubError(
                ErrorCode.PERMISSION_DENIED, f"invalid subscription token: {exc}"
            ) from None
        if str(claims.get("sub", "")) != user or claims.get("channel") != channel:
            raise HubError(
                ErrorCode.PERMISSION_DENIED, "subscription token is for another user or channel"
            )
        return claims
