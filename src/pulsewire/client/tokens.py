"""Token callbacks: the application's ``get_token``, plain or async."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from .errors import ClientError

__all__ = ["TokenGetter", "fetch_token"]

TokenGetter = Callable[[], "str | Awaitable[str]"]
"""A callable returning a token (JWT), or an awaitable of one."""


async def fetch_token(get_token: TokenGetter) -> str:
    """Call ``get_token`` (awaiting what it returns if needed); it must give a string."""
    token = get_token()
    if inspect.isawaitable(token):
        token = await token
    if not isinstance(token, str):
        raise ClientError(107, f"get_token returned {type(token).__name__}, not a str")
    return token
