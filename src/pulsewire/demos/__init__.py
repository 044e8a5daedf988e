"""The demos of ``pulsewire serve --demo`` (what ``make run`` starts), apart from the server.

:mod:`~pulsewire.demos.mode`: the demo namespaces and the token endpoint;
:mod:`~pulsewire.demos.notes`: the collaborative notes' CRDT documents (needs the ``demo``
extra, pycrdt); :mod:`~pulsewire.demos.producers`: the dashboard's live metrics. The server
imports this package only when demo mode is on.
"""

from __future__ import annotations

from .mode import DemoTokens, demo_config

__all__ = ["DemoTokens", "demo_config"]
