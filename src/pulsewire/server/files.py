"""Static files: ``/pulsewire.js`` (with its TypeScript declarations) and the demo pages.

Served by ``pulsewire serve`` (the whole web root) and by
:class:`~pulsewire.server.asgi.HubASGI` (the client files only). Each answer carries:

* ``ETag`` (a hash of the content, so every node of a cluster gives the same one) and a
  ``304 Not Modified`` for a matching ``If-None-Match``;
* ``Cache-Control: max-age=60, must-revalidate``: browsers reuse a file for a minute, then
  ask again (a 304 when nothing changed), so a new release reaches them within a minute;
* ``Access-Control-Allow-Origin`` (the page's origin) when the request's ``Origin`` is one
  the hub allows (the Origin policy of its WebSocket and HTTP transports), and always
  ``Vary: Origin``, so that a page of an allowed other origin can ``import`` the client.
  Other origins get the file without it (a browser then refuses a module import).
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Iterable
from pathlib import Path

from ..protocol.origins import OriginPolicy, request_scheme
from ..transports.http_types import HttpRequest, HttpResponse

__all__ = ["CACHE_CONTROL", "CLIENT_FILES", "StaticFiles", "etag_matches"]

CACHE_CONTROL = "max-age=60, must-revalidate"
"""How long browsers and proxies may reuse a file before revalidating it."""

CLIENT_FILES = ("pulsewire.js", "pulsewire.d.ts")
"""The browser client and its TypeScript declarations (what ``HubASGI`` serves)."""

# mimetypes guesses from the system's tables: ".ts" is an MPEG transport stream there.
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".ts": "application/typescript; charset=utf-8",
    ".json": "application/json",
}

_MAX_CACHED = 512  # ETags remembered (by file and modification); a web root is small


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header matches ``etag`` (weak comparison, RFC 9110
    13.1.2: ``W/`` prefixes ignored; ``*`` matches any)."""
    if header is None:
        return False
    ours = etag.removeprefix("W/")
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == ours:
            return True
    return False


class StaticFiles:
    """A request handler for the files under ``root`` (``only``: these names, relative to
    ``root``; None: every file below it). A path ending in ``/`` means its ``index.html``.

    ``origins`` is the hub's Origin policy, shared and updated in place on a reload."""

    def __init__(
        self, root: Path, origins: OriginPolicy, *, only: Iterable[str] | None = None
    ) -> None:
        self.root = root.resolve()
        self.origins = origins
        self.only = None if only is None else frozenset(only)
        self._etags: dict[tuple[Path, int, int], str] = {}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        target = self._target(request.path)
        not_found = HttpResponse(404, f"not found: {request.path}\n")
        if target is None:
            return not_found
        try:
            stat = target.stat()
            key = (target, stat.st_mtime_ns, stat.st_size)
            etag = self._etags.get(key)
            data = None
            if etag is None:
                data = target.read_bytes()
                etag = self._remember(key, data)
            headers = [("ETag", etag), ("Cache-Control", CACHE_CONTROL), *self._cors(request)]
            if etag_matches(request.headers.get("If-None-Match"), etag):
                return HttpResponse(304, b"", headers)
            if data is None:
                data = target.read_bytes()
                if len(data) != stat.st_size:  # changed since: the ETag must be the content's
                    headers[0] = ("ETag", self._remember(None, data))
        except (FileNotFoundError, IsADirectoryError):  # removed or replaced meanwhile
            return not_found
        headers += [("Content-Type", content_type(target)), ("X-Content-Type-Options", "nosniff")]
        return HttpResponse(200, data, headers)

    def _target(self, path: str) -> Path | None:
        """The file a request path names, or None (missing, outside the root, not listed)."""
        if path.endswith("/"):
            path += "index.html"
        name = path.lstrip("/")
        if self.only is not None and name not in self.only:
            return None
        target = (self.root / name).resolve()
        if self.root not in target.parents or not target.is_file():
            return None
        return target

    def _remember(self, key: tuple[Path, int, int] | None, data: bytes) -> str:
        """The ETag of ``data``, remembered under ``key`` (the file's path, mtime, size)
        when that still describes it."""
        etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
        if key is not None and key[2] == len(data):
            if len(self._etags) >= _MAX_CACHED:
                self._etags.clear()
            self._etags[key] = etag
        return etag

    def _cors(self, request: HttpRequest) -> list[tuple[str, str]]:
        origin = request.headers.get("Origin")
        scheme = request_scheme(request.secure, request.headers)
        headers = [("Vary", "Origin")]
        if origin is not None and self.origins.allows(
            origin, request.headers.get("Host"), scheme=scheme
        ):
            headers.append(("Access-Control-Allow-Origin", origin))
        return headers


def content_type(path: Path) -> str:
    """The Content-Type of a static file, text with its charset."""
    known = _TYPES.get(path.suffix)
    if known is not None:
        return known
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return kind + "; charset=utf-8" if kind.startswith("text/") else kind
