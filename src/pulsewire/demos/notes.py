"""Demo mode's collaborative notes (``/demo/notes/``): the server side of a shared text edited
by several people at once, kept consistent by a CRDT (Yjs in the browsers, pycrdt here).

Protocol, on top of the hub's channels (namespace ``notes``: presence, history 1000):

* a browser publishes each local change as a Yjs update to ``notes:<doc>``:
  ``{"update": "<base64 of the Yjs update (v1 encoding)>"}``; everyone subscribed applies it
  (updates commute and are idempotent: order and duplicates do not matter);
* the server applies every update it sees (the ``on_publish`` hook) to its own pycrdt ``Doc``
  per document, and refuses what is not a valid update (error 107);
* ``rpc("notes.state", {"doc": "<doc>"})`` answers
  ``{"state": "<base64 of the full state as one update>", "vector": "<base64 state vector>"}``
  so that a joining (or resyncing) client starts from the current document, then sends back
  what the server lacks (``Y.encodeStateAsUpdate(doc, vector)``), e.g. edits made offline.

History and recovery carry the updates missed during a short disconnection. A document the
server does not hold in memory (first use, evicted, or after a restart with a persistent
engine) is rebuilt from the channel's history first. Hooks see the publications of this
node's clients only: with several nodes, each node's copy is completed from history when it
is loaded and by the clients' resync, not live.

Wiring (demo mode)::

    notes = NotesService(hub)
    hub.on_publish = notes.on_publish
    hub.on_rpc = notes.on_rpc
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections import OrderedDict
from typing import Any

from pycrdt import Doc, Text

from ..hub.channels import parse_channel
from ..hub.errors import ErrorCode, HubError
from ..hub.hub import Hub

__all__ = ["NAMESPACE", "STATE_METHOD", "NotesService"]

logger = logging.getLogger("pulsewire.demo")

NAMESPACE = "notes"
STATE_METHOD = "notes.state"
MAX_DOCS = 100
"""Documents kept in memory; the least recently used one is dropped (and rebuilt from
history when it is needed again)."""


def _decode_update(data: Any) -> bytes:
    """The update bytes of ``{"update": "<base64>"}``; HubError 107 if malformed."""
    encoded = data.get("update") if isinstance(data, dict) else None
    if not isinstance(encoded, str):
        raise HubError(ErrorCode.BAD_REQUEST, 'notes: publish {"update": "<base64>"}')
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise HubError(ErrorCode.BAD_REQUEST, "notes: update is not valid base64") from None


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class NotesService:
    """The authoritative pycrdt document of each ``notes:<doc>`` channel."""

    def __init__(self, hub: Hub, *, max_docs: int = MAX_DOCS) -> None:
        self.hub = hub
        self.max_docs = max_docs
        self.docs: OrderedDict[str, Doc[Any]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    def install(self) -> NotesService:
        """Set this service as the hub's ``on_publish`` and ``on_rpc`` hooks."""
        self.hub.on_publish = self.on_publish
        self.hub.on_rpc = self.on_rpc
        return self

    # -------------------------------------------------------------------------- hooks

    async def on_publish(self, session: Any, channel: str, data: Any) -> None:
        """Hub hook: apply a client's update to the server's copy (refuse malformed ones)."""
        if not channel.startswith(f"{NAMESPACE}:"):
            return
        update = _decode_update(data)
        doc = await self.document(channel)
        try:
            doc.apply_update(update)
        except ValueError as exc:
            raise HubError(ErrorCode.BAD_REQUEST, f"notes: not a Yjs update: {exc}") from None

    async def on_rpc(self, session: Any, method: str, data: Any) -> dict[str, str]:
        """Hub hook: ``notes.state`` with ``{"doc": name}`` -> ``{"state", "vector"}``."""
        if method != STATE_METHOD:
            raise HubError(ErrorCode.METHOD_NOT_FOUND, f"unknown RPC method {method!r}")
        name = data.get("doc") if isinstance(data, dict) else None
        if not isinstance(name, str):
            raise HubError(ErrorCode.BAD_REQUEST, 'notes.state needs {"doc": "<name>"}')
        channel = f"{NAMESPACE}:{name}"
        parse_channel(channel, self.hub.config)  # HubError 107 for a bad name
        doc = await self.document(channel)
        return {"state": _encode(doc.get_update()), "vector": _encode(doc.get_state())}

    # ---------------------------------------------------------------------- documents

    async def document(self, channel: str) -> Doc[Any]:
        """The document of ``channel``, rebuilt from the channel's history if not in memory."""
        doc = self.docs.get(channel)
        if doc is not None:
            self.docs.move_to_end(channel)
            return doc
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            doc = self.docs.get(channel)
            if doc is None:
                doc = await self._load(channel)
                self.docs[channel] = doc
                while len(self.docs) > self.max_docs:
                    self.docs.popitem(last=False)
        if not lock.locked():
            self._locks.pop(channel, None)
        return doc

    async def _load(self, channel: str) -> Doc[Any]:
        doc: Doc[Any] = Doc()
        history = await self.hub.history(channel)
        applied = 0
        for publication in history.publications:
            try:
                doc.apply_update(_decode_update(publication.data))
                applied += 1
            except (HubError, ValueError):
                continue  # refused when published; nothing to rebuild from
        if applied:
            logger.info("notes: rebuilt %s from %d update(s) of history", channel, applied)
        return doc

    def text(self, channel: str, name: str = "text") -> str:
        """The text of a document's ``Y.Text`` named ``name`` ("" if unknown): for debugging."""
        doc = self.docs.get(channel)
        return "" if doc is None else str(doc.get(name, type=Text))
