"""What ``pulsewire serve`` logs at start, from its Settings (one layer below the CLI)."""

from __future__ import annotations

from pulsewire.hub.config import HubConfig
from pulsewire.server.proxy import proxy_settings
from pulsewire.server.settings import Settings
from pulsewire.server.summary import auth_modes, no_client_can_connect, startup_summary


def test_each_way_in_is_named() -> None:
    config = HubConfig(
        token_hmac_secret="s",
        token_rsa_public_key="-----BEGIN PUBLIC KEY-----",
        token_ecdsa_public_key="-----BEGIN PUBLIC KEY-----",
        token_jwks_url="https://id.example/jwks.json",
        allow_anonymous=True,
    )
    assert auth_modes(Settings(config=config)) == [
        "token secret (HS256)",
        "RSA public key (RS256)",
        "EC public key (ES256)",
        "JWKS https://id.example/jwks.json",
        "anonymous",
    ]


def test_any_way_in_silences_the_warning() -> None:
    assert no_client_can_connect(Settings(config=HubConfig())) is not None
    with_api = no_client_can_connect(Settings(config=HubConfig(api_key="k")))
    assert with_api is not None and "HTTP API is off" not in with_api
    for config in (
        HubConfig(token_hmac_secret="s"),
        HubConfig(allow_anonymous=True),
        HubConfig(token_jwks_url="https://id.example/jwks.json"),
    ):
        assert no_client_can_connect(Settings(config=config)) is None


def test_a_backend_proxy_deciding_connects_is_a_way_in() -> None:
    proxy = proxy_settings({"url": "http://127.0.0.1:9000/pw/", "connect": {}})
    settings = Settings(config=HubConfig(), proxy=proxy)
    assert auth_modes(settings) == ["backend proxy (http://127.0.0.1:9000/pw/connect)"]
    assert no_client_can_connect(settings) is None
    rpc_only = Settings(config=HubConfig(), proxy=proxy_settings({"url": "http://h/", "rpc": {}}))
    assert no_client_can_connect(rpc_only) is not None


def test_the_engine_password_is_not_logged() -> None:
    settings = Settings(config=HubConfig(engine="redis://:hunter2@10.0.0.5:6379/0"))
    assert startup_summary(settings)[0] == "engine: redis://***@10.0.0.5:6379/0"


def test_sentinel_passwords_are_not_logged() -> None:
    engine = "redis+sentinel://:pw1@s1:1,s2:2/m/0?password=pw2&sentinel_password=pw3"
    settings = Settings(config=HubConfig(engine=engine))
    assert startup_summary(settings)[0] == (
        "engine: redis+sentinel://***@s1:1,s2:2/m/0?password=***&sentinel_password=***"
    )
