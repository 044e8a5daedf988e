"""Checks of what a publisher gives the hub: the data and the idempotency key."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from .errors import ErrorCode, HubError

__all__ = ["IDEMPOTENCY_KEY_MAX", "check_data", "check_idempotency_key"]

#: Longest ``idempotency_key``, in characters.
IDEMPOTENCY_KEY_MAX = 256


def check_idempotency_key(key: object) -> None:
    """Raise HubError 107 unless ``key`` is a string of 1 to 256 characters."""
    if not isinstance(key, str) or not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
        raise HubError(
            ErrorCode.BAD_REQUEST,
            f"idempotency_key must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX} "
            "characters",
        )


_json_check = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
_msgpack_check = msgpack.Packer(use_bin_type=True).pack


def check_data(data: Any) -> None:
    """Publications travel and are stored as JSON and reach MessagePack subscribers too:
    refuse what either cannot represent (bytes, NaN, integers beyond 64 bits...)."""
    try:
        _json_check(data)
        _msgpack_check(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        message = f"data must be representable as JSON: {exc}"
        raise HubError(ErrorCode.BAD_REQUEST, message) from None
