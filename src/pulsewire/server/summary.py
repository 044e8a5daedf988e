"""What ``pulsewire serve`` says when it starts (logged, on stderr): the engine, whether the
HTTP API is on, how clients authenticate, the allowed origins, the config file and the
``PULSEWIRE_*`` variables that set something; a warning naming those that set nothing
(typos?); and a loud warning when no client could ever connect (no token key, no
anonymous access, no ``[proxy.connect]`` backend to decide)."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit

from .settings import Settings

__all__ = ["auth_modes", "log_startup", "no_client_can_connect", "startup_summary"]

logger = logging.getLogger("pulsewire.server")


def _safe_engine(engine: str) -> str:
    """The engine URL without a password (``redis://:secret@host`` → ``redis://***@host``,
    ``?password=secret`` → ``?password=***``)."""
    parts = urlsplit(engine)
    if parts.password is not None:
        parts = parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}")
    if "password" in parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        masked = [(k, "***" if "password" in k else v) for k, v in query]
        parts = parts._replace(query=urlencode(masked, safe="*"))
    return parts.geturl()


def auth_modes(settings: Settings) -> list[str]:
    """How a client may be admitted, one entry per way (empty: none)."""
    config = settings.config
    modes = []
    if config.token_hmac_secret:
        modes.append("token secret (HS256)")
    if config.token_rsa_public_key:
        modes.append("RSA public key (RS256)")
    if config.token_ecdsa_public_key:
        modes.append("EC public key (ES256)")
    if config.token_jwks_url:
        modes.append(f"JWKS {config.token_jwks_url}")
    if settings.proxy is not None and "connect" in settings.proxy.routes:
        modes.append(f"backend proxy ({settings.proxy.routes['connect'].url})")
    if config.allow_anonymous:
        modes.append("anonymous")
    return modes


def no_client_can_connect(settings: Settings) -> str | None:
    """Why every client would be refused (4503), or None if some could connect."""
    if auth_modes(settings):
        return None
    api = "" if settings.config.api_key else " and the HTTP API is off"
    return (
        f"NO CLIENT CAN CONNECT: no token key and no anonymous access{api}, so every "
        "client is refused (4503). Set --token-secret (or token_hmac_secret, "
        "token_rsa_public_key, token_ecdsa_public_key, --token-jwks-url in [hub]), "
        "--allow-anonymous, or a backend that decides ([proxy.connect]); see "
        "docs/configuration.md"
    )


def startup_summary(settings: Settings) -> list[str]:
    """The lines :func:`log_startup` logs, e.g. ``engine: memory``."""
    config = settings.config
    origins = ", ".join(settings.allowed_origins) or "none besides the node's own"
    return [
        f"engine: {_safe_engine(config.engine)}",
        "HTTP API: "
        + ("on (/api/, Authorization: apikey)" if config.api_key else "off (no api key set)"),
        f"auth: {', '.join(auth_modes(settings)) or 'none'}",
        f"allowed origins: {origins}",
        f"config file: {settings.config_file or 'none (flags and defaults)'}",
    ] + ([f"environment: {', '.join(settings.environment)}"] if settings.environment else [])


def log_startup(settings: Settings) -> None:
    """Log the start-up summary (INFO) and, if no client could connect, a WARNING."""
    for line in startup_summary(settings):
        logger.info("%s", line)
    if settings.unknown_environment:
        logger.warning(
            "unknown environment variable(s), ignored: %s (see docs/configuration.md)",
            ", ".join(settings.unknown_environment),
        )
    warning = no_client_can_connect(settings)
    if warning is not None:
        logger.warning("%s", warning)
