"""Static files (``pulsewire.server.files``): ETags and 304s, Cache-Control, CORS for the
allowed origins; through the handler, over ``pulsewire serve``'s front door, and after a
reload that changes the allowed origins."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from pulsewire.cli import _build_parser, serve_options
from pulsewire.protocol.handshake import Headers
from pulsewire.protocol.origins import OriginPolicy
from pulsewire.server.app import WEB_ROOT
from pulsewire.server.files import CACHE_CONTROL, StaticFiles, etag_matches
from pulsewire.server.main import load_settings, server_from_settings
from pulsewire.server.reload import apply_settings
from pulsewire.transports.http_types import HttpRequest, HttpResponse

OTHER = "https://app.example.com"


def get(
    files: StaticFiles, path: str, *headers: tuple[str, str], host: str = "hub.example:8000"
) -> HttpResponse:
    """``files``' answer to a GET of ``path`` (``Host: host``, plus ``headers``)."""
    request = HttpRequest(
        method="GET",
        target=path,
        headers=Headers([("Host", host), *headers]),
        body=b"",
        remote_address="127.0.0.1",
    )
    return asyncio.run(files(request))


def header(response: HttpResponse, name: str) -> str | None:
    return next((v for k, v in response.headers if k.lower() == name.lower()), None)


@pytest.fixture
def web(tmp_path: Path) -> Path:
    (tmp_path / "app.js").write_text("export const a = 1;\n")
    (tmp_path / "index.html").write_text("<p>hi</p>\n")
    return tmp_path


# ------------------------------------------------------------------------ ETag, 304


def test_etag_and_revalidation(web: Path):
    files = StaticFiles(web, OriginPolicy([], same_host=True))
    first = get(files, "/app.js")
    assert first.status == 200 and first.body == b"export const a = 1;\n"
    etag = header(first, "ETag")
    assert etag is not None and etag.startswith('"') and etag.endswith('"')
    assert header(first, "Cache-Control") == CACHE_CONTROL == "max-age=60, must-revalidate"
    assert header(first, "Content-Type") == "text/javascript; charset=utf-8"
    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = get(files, "/app.js", ("If-None-Match", match))
        assert again.status == 304, match
        assert again.body == b""
        assert header(again, "ETag") == etag
        assert header(again, "Cache-Control") == CACHE_CONTROL
    assert get(files, "/app.js", ("If-None-Match", '"other"')).status == 200


def test_the_etag_is_the_content_s(web: Path):
    """Same content, same ETag (whatever the file's time: every node of a cluster agrees);
    new content, a new ETag, and the old one gets the new file."""
    files = StaticFiles(web, OriginPolicy(None))
    etag = header(get(files, "/app.js"), "ETag")
    os.utime(web / "app.js", ns=(1, 1))
    assert header(get(files, "/app.js"), "ETag") == etag
    assert header(get(StaticFiles(web, OriginPolicy(None)), "/app.js"), "ETag") == etag
    (web / "app.js").write_text("export const a = 2;\n")
    changed = get(files, "/app.js", ("If-None-Match", etag or ""))
    assert changed.status == 200 and changed.body == b"export const a = 2;\n"
    assert header(changed, "ETag") != etag


def test_etag_matches():
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')  # If-None-Match compares weakly
    assert etag_matches(' "b" ,"a"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches(None, '"a"')
    assert not etag_matches('"ab"', '"a"')
    assert not etag_matches("", '"a"')


def test_only_the_listed_files(web: Path):
    files = StaticFiles(web, OriginPolicy(None), only=["app.js"])
    assert get(files, "/app.js").status == 200
    assert get(files, "/index.html").status == 404
    assert get(files, "/").status == 404


def test_content_types():
    files = StaticFiles(WEB_ROOT, OriginPolicy(None))
    kinds = {
        "/pulsewire.js": "text/javascript; charset=utf-8",
        "/pulsewire.d.ts": "application/typescript; charset=utf-8",  # not video/mp2t
        "/package.json": "application/json",
        "/": "text/html; charset=utf-8",
        "/demo/common.css": "text/css; charset=utf-8",
    }
    for path, kind in kinds.items():
        response = get(files, path)
        assert response.status == 200, path
        assert header(response, "Content-Type") == kind, path
        assert header(response, "X-Content-Type-Options") == "nosniff"


# ------------------------------------------------------------------------------ CORS


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (OTHER, True),  # listed
        ("https://eu.example.org", True),  # a pattern
        ("http://hub.example:8000", True),  # the hub's own origin
        ("https://evil.example", False),
        ("null", False),
    ],
)
def test_cors_for_the_allowed_origins(web: Path, origin: str, allowed: bool):
    files = StaticFiles(web, OriginPolicy([OTHER, "https://*.example.org"], same_host=True))
    response = get(files, "/app.js", ("Origin", origin))
    assert response.status == 200  # the file itself is public: only the browser refuses it
    assert header(response, "Vary") == "Origin"
    assert header(response, "Access-Control-Allow-Origin") == (origin if allowed else None)
    revalidated = get(files, "/app.js", ("Origin", origin), ("If-None-Match", "*"))
    assert revalidated.status == 304
    assert header(revalidated, "Access-Control-Allow-Origin") == (origin if allowed else None)


def test_no_origin_no_cors_header_but_vary(web: Path):
    response = get(StaticFiles(web, OriginPolicy([OTHER])), "/app.js")
    assert header(response, "Vary") == "Origin"
    assert header(response, "Access-Control-Allow-Origin") is None


def test_origin_checks_off_allow_every_origin(web: Path):
    response = get(StaticFiles(web, OriginPolicy(None)), "/app.js", ("Origin", "https://x.test"))
    assert header(response, "Access-Control-Allow-Origin") == "https://x.test"


def test_a_reload_changes_the_origins_of_static_files_too(tmp_path: Path):
    def settings(*origins: str):
        argv = ["serve", *(f"--allowed-origin={o}" for o in origins)]
        return load_settings(serve_options(_build_parser().parse_args(argv)))

    current, new = settings("https://old.example"), settings(OTHER)
    server = server_from_settings(current)
    assert server.files is not None
    before = get(server.files, "/pulsewire.js", ("Origin", OTHER))
    assert header(before, "Access-Control-Allow-Origin") is None
    apply_settings(server, current, new)
    after = get(server.files, "/pulsewire.js", ("Origin", OTHER))
    assert header(after, "Access-Control-Allow-Origin") == OTHER
    old = get(server.files, "/pulsewire.js", ("Origin", "https://old.example"))
    assert header(old, "Access-Control-Allow-Origin") is None


# ------------------------------------------------------------ over the front door


async def test_served_by_pulsewire_serve(front, http):
    server = await front(allowed_origins=[OTHER])
    expected = (WEB_ROOT / "pulsewire.js").read_bytes()
    response = await http(server, "GET", "/pulsewire.js", headers=[("Origin", OTHER)])
    assert response.status == 200 and response.body == expected
    assert response.header("Access-Control-Allow-Origin") == OTHER
    assert response.header("Vary") == "Origin"
    assert response.header("Cache-Control") == CACHE_CONTROL
    etag = response.header("ETag")
    assert etag
    head = await http(server, "HEAD", "/pulsewire.js")
    assert head.header("ETag") == etag
    assert int(head.header("Content-Length")) == len(expected)
    # A 304 has no body and no Content-Length: the connection stays usable (keep-alive).
    not_modified = await http(server, "GET", "/pulsewire.js", headers=[("If-None-Match", etag)])
    assert not_modified.status == 304
    assert not_modified.header("Content-Length") is None and not_modified.body == b""
    assert not_modified.header("ETag") == etag
    types = await http(server, "GET", "/pulsewire.d.ts")
    assert types.status == 200 and types.body == (WEB_ROOT / "pulsewire.d.ts").read_bytes()
