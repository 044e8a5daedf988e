"""The application's hooks into the hub: what each one is given and returns, and one way to
call them.

An embedding application passes plain functions or coroutine functions to :class:`Hub`
(``authenticate=``, ``on_connect=``, ...). Each is described here by a
:class:`typing.Protocol`: the arguments it is called with (positionally, so any parameter
names will do) and what it may return, itself or through an awaitable. The session hooks are
generic in the session's type: ``OnConnect[HookSession]`` is a hook that uses only what
:class:`~pulsewire.hub.contracts.HookSession` promises; a bare ``OnConnect`` accepts a hook
typed with any session class (e.g. ``session: Session``). The hub calls every
hook through :func:`call_hook`, which calls it at once and gives an awaitable of its outcome
whether the hook was plain or async.

A hook refuses by raising: :class:`~pulsewire.hub.errors.HubError` answers the command with
its code, :class:`~pulsewire.hub.errors.Disconnect` ends the session.

Expiry: credentials with ``expires_at`` (from the token or ``authenticate``) and
subscriptions given an expiry by ``on_subscribe`` (a :class:`SubscribeOutcome`) call
``on_refresh`` and ``on_sub_refresh`` when they expire (see :mod:`pulsewire.hub.expiry`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar, overload

from .auth import Credentials
from .contracts import ConnectRequest, HookSession
from .errors import Disconnect, DisconnectCode

__all__ = [
    "Authenticate",
    "MaybeAwaitable",
    "OnConnect",
    "OnDisconnect",
    "OnMessage",
    "OnPublish",
    "OnRefresh",
    "OnRpc",
    "OnSubRefresh",
    "OnSubscribe",
    "SubscribeOutcome",
    "call_hook",
    "credentials_from",
    "subscribe_outcome",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
if TYPE_CHECKING:  # a TypeVar's default (PEP 696) is typing's from Python 3.13 only
    from typing_extensions import TypeVar as DefaultingTypeVar

    S_contra = DefaultingTypeVar("S_contra", bound=HookSession, contravariant=True, default=Any)
else:
    S_contra = TypeVar("S_contra", bound=HookSession, contravariant=True)
"""The session type a hook is written for (anything that offers HookSession; a bare
``OnConnect`` is ``OnConnect[Any]``, so that hooks typed with any session class fit)."""

MaybeAwaitable: TypeAlias = T | Awaitable[T]
"""What a hook returns: its outcome, or an awaitable of it (an ``async def`` hook)."""


class Authenticate(Protocol):
    """``authenticate(request)``: who a connecting client is, decided by the application.

    Returns :class:`~pulsewire.hub.auth.Credentials`, a user id (``str``, or ``int``
    taken as its decimal string; ``""`` for an anonymous connection), or ``None`` to fall
    back to the connection token (see :func:`credentials_from`). Raise
    :class:`~pulsewire.hub.errors.Disconnect` to refuse the connection.
    """

    def __call__(
        self, request: ConnectRequest, /
    ) -> MaybeAwaitable[Credentials | str | int | None]: ...


class OnConnect(Protocol[S_contra]):
    """``on_connect(session)``: the session is authenticated and about to be connected."""

    def __call__(self, session: S_contra, /) -> MaybeAwaitable[None]: ...


@dataclass(frozen=True)
class SubscribeOutcome:
    """What ``on_subscribe`` may return instead of bare channel info: the info, and when the
    subscription expires (Unix time; ``on_sub_refresh`` is asked then)."""

    info: Any = None
    """The channel info others see for this subscriber; ``None`` keeps the token's."""
    expires_at: float | None = None
    """When the subscription expires (Unix time), or ``None``: it does not."""


def subscribe_outcome(outcome: object) -> SubscribeOutcome:
    """An ``on_subscribe`` hook's outcome as a :class:`SubscribeOutcome` (a bare value is
    the channel info, as before there were expiries)."""
    if isinstance(outcome, SubscribeOutcome):
        return outcome
    return SubscribeOutcome(info=outcome)


class OnSubscribe(Protocol[S_contra]):
    """``on_subscribe(session, channel, params)``: a client subscribes, after the hub's own
    checks passed; ``params`` are the subscribe command's, as sent. Returns the channel info
    others see for this subscriber (``chan_info``), or ``None`` to keep the token's, or a
    :class:`SubscribeOutcome` (info and expiry)."""

    def __call__(
        self, session: S_contra, channel: str, params: dict[str, Any], /
    ) -> MaybeAwaitable[Any]: ...


class OnPublish(Protocol[S_contra]):
    """``on_publish(session, channel, data)``: a client publishes. Returns the data to
    publish instead, or ``None`` to publish ``data`` as it is."""

    def __call__(self, session: S_contra, channel: str, data: Any, /) -> MaybeAwaitable[Any]: ...


class OnRpc(Protocol[S_contra]):
    """``on_rpc(session, method, data)``: a client's ``rpc`` command; returns the result's
    ``data`` (anything the session's codec can encode)."""

    def __call__(self, session: S_contra, method: str, data: Any, /) -> MaybeAwaitable[Any]: ...


class OnMessage(Protocol[S_contra]):
    """``on_message(session, data)``: a client's ``send`` command, an asynchronous message
    (the reply, ``{}``, follows once the hook returned; what it returns is ignored)."""

    def __call__(self, session: S_contra, data: Any, /) -> MaybeAwaitable[None]: ...


class OnRefresh(Protocol[S_contra]):
    """``on_refresh(session)``: the connection's credentials expired. Returns new
    :class:`~pulsewire.hub.auth.Credentials` (their ``user`` must be the session's; their
    ``expires_at`` is the next expiry, ``None`` for none; their ``info``, unless ``None``,
    replaces the connection's), or ``None`` to end the session with 4002. Raise
    :class:`~pulsewire.hub.errors.Disconnect` to end it with another code; a
    :class:`~pulsewire.hub.errors.HubError` (the application could not decide) ends it with
    4010. Without this hook an expiry ends the session with 4002 (the client refreshes its
    token before, with the ``refresh`` command)."""

    def __call__(self, session: S_contra, /) -> MaybeAwaitable[Credentials | None]: ...


class OnSubRefresh(Protocol[S_contra]):
    """``on_sub_refresh(session, channel)``: a subscription given an expiry by
    ``on_subscribe`` expired. Returns the next expiry (Unix time) to extend it, or ``None``
    to end it (``unsubscribe`` push, code 2501, ``resubscribe: true``). A
    :class:`~pulsewire.hub.errors.HubError` ends it the same way, with the error's message;
    :class:`~pulsewire.hub.errors.Disconnect` ends the session. Without this hook an expired
    subscription ends (2501)."""

    def __call__(self, session: S_contra, channel: str, /) -> MaybeAwaitable[float | None]: ...


class OnDisconnect(Protocol[S_contra]):
    """``on_disconnect(session, code, reason)``: a connected session ended. Its outcome is
    not waited for by the session; an exception in it is logged."""

    def __call__(self, session: S_contra, code: int, reason: str, /) -> MaybeAwaitable[None]: ...


class _Ready(Generic[T_co]):
    """An awaitable that is done already: the outcome of a plain (non-async) hook."""

    __slots__ = ("_value",)

    def __init__(self, value: T_co) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, T_co]:
        yield from ()
        return self._value


@overload
def call_hook(hook: Callable[..., Awaitable[T]], /, *args: Any) -> Awaitable[T]: ...


@overload
def call_hook(hook: Callable[..., MaybeAwaitable[T]], /, *args: Any) -> Awaitable[T]: ...


def call_hook(hook: Callable[..., MaybeAwaitable[T]], /, *args: Any) -> Awaitable[T]:
    """Call ``hook(*args)`` now and return an awaitable of its outcome.

    A plain function runs (and raises) during this call and its result is ready at once;
    an ``async def`` hook (or any that returns an awaitable) runs when awaited. Both are
    written ``outcome = await call_hook(hook, ...)``; a caller that must not wait may hand
    the awaitable to a task.
    """
    outcome = hook(*args)
    if inspect.isawaitable(outcome):
        return outcome
    return _Ready(outcome)


def credentials_from(outcome: object, *, allow_anonymous: bool) -> Credentials | None:
    """What an :class:`Authenticate` hook's outcome means: Credentials, or None to fall back
    to the connection token. An empty user id is refused (Disconnect 4503) unless anonymous
    connections are allowed; any other type is the application's bug (TypeError)."""
    if isinstance(outcome, int) and not isinstance(outcome, bool):
        outcome = str(outcome)  # numeric user ids are common
    if isinstance(outcome, str):
        if not outcome and not allow_anonymous:
            raise Disconnect(DisconnectCode.UNAUTHORIZED, "anonymous connections are off")
        return Credentials(user=outcome)
    if isinstance(outcome, Credentials):
        if isinstance(outcome.subs, str):  # iterating it would subscribe to its characters
            raise TypeError("Credentials.subs is a sequence of channel names, not one string")
        return outcome
    if outcome is not None:
        raise TypeError("authenticate must return Credentials, a user id or None")
    return None
