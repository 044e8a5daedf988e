"""``pulsewire serve``: :class:`ServeOptions` (flags over ``PULSEWIRE_*`` variables over the
config file over defaults) to one node in this process or ``--workers N`` under a supervisor.

The pieces: :mod:`~pulsewire.server.settings` (options and settings),
:mod:`~pulsewire.server.node` (one node: start, drain on SIGTERM/SIGINT, reload on SIGHUP),
:mod:`~pulsewire.server.workers` (the supervisor), :mod:`~pulsewire.server.reload`. Their
main names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..aio.loop import run
from .logs import configure_logging
from .node import (
    RESTART_REASON,
    abort_connections,
    build_server,
    drain,
    fail_to_stderr,
    run_node,
    server_from_settings,
)
from .settings import (
    DEFAULT_DRAIN_TIMEOUT,
    FRONT_DOOR_FIELDS,
    ServeOptions,
    Settings,
    front_door_changes,
    load_settings,
    pin_generated_secret,
)
from .workers import supervise

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "FRONT_DOOR_FIELDS",
    "RESTART_REASON",
    "ServeOptions",
    "Settings",
    "abort_connections",
    "build_server",
    "drain",
    "front_door_changes",
    "load_settings",
    "pin_generated_secret",
    "run_node",
    "serve_main",
    "server_from_settings",
]


def serve_main(options: ServeOptions | Mapping[str, Any]) -> int:
    """``pulsewire serve``: one node in this process, or ``--workers N`` under a supervisor."""
    try:
        args = options if isinstance(options, ServeOptions) else ServeOptions.from_mapping(options)
        configure_logging(args.log_format, args.log_level, node=args.node_name or "")
    except ValueError as exc:
        fail_to_stderr(2, str(exc))
        return 2
    workers = args.workers
    if workers is None:  # [server] workers, or PULSEWIRE_WORKERS
        try:
            workers = load_settings(args).workers
        except (ValueError, OSError) as exc:
            fail_to_stderr(2, str(exc))
            return 2
    if workers is not None:
        return supervise(args, workers)
    return run(run_node(args))
