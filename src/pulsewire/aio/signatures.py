"""Typed forwarding: ``serve()`` and ``connect()`` take exactly the keyword arguments of
:class:`Server` and :class:`Connect`, for type checkers, IDEs and ``help()`` alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["forwards_to"]

P = ParamSpec("P")
R = TypeVar("R")


def forwards_to(target: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[P, R]]:
    """Give the decorated function ``target``'s parameters (it must pass them on as they are):
    one definition of the options, no ``**options: Any``."""

    def decorate(function: Callable[..., R]) -> Callable[P, R]:
        signature = inspect.signature(target)
        returns = inspect.signature(function).return_annotation
        function.__signature__ = signature.replace(return_annotation=returns)  # type: ignore[attr-defined]
        return function

    return decorate
