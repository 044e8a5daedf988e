"""Memory budgets: what one peer, and one address, can make the server hold.

Every byte a server holds because of a peer is charged to an :class:`Account`: unparsed input,
a message being assembled or inflated, received messages not yet consumed, and output of every
kind queued for it (data, pongs, close frames, HTTP responses, SSE events, long-poll batches).
One account is opened per connection (and per HTTP-transport session, which outlives its
requests), under the peer's address; the address keeps the sum of its accounts.

The owner of an account reports what it holds with :meth:`Account.hold` whenever that grows or
shrinks, and the account answers with the same flow control everywhere:

* above the high-water mark of the account or of its address, the owner is told to stop
  reading from the peer (``pause``), and to start again (``resume``) once both are back at or
  under half their high-water marks. An account paused because its *address* is over is
  resumed by whichever account of that address brings the sum down.
* above the hard limit of the account or of its address, :meth:`Account.hold` returns False:
  the owner closes the connection (WebSocket 1013, HTTP 503) and the refusal is counted in
  :attr:`Budgets.exceeded`, once per account however often the owner reports afterwards.
  An account paused for its own sake also waits for its address to be under half its
  high-water mark: resuming is the conservative side.

So the worst a peer can make a server hold is the address's hard limit plus what one read can
add before the check (the transport's read size), whatever the number of its connections.
Written here because no library does per-address memory accounting for asyncio protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Account", "BudgetLimits", "Budgets"]

KiB = 1024
MiB = 1024 * KiB

READ_SIZE = 256 * KiB
"""The most one ``data_received`` brings (asyncio's and uvloop's read size): what an account
can grow by between two reports, before inflation."""
INFLATED_PER_READ = 1 * MiB
"""What one read may inflate into before the rest of it waits (at least ``max_size``)."""
_UNBOUNDED = 1 << 62


@dataclass(frozen=True)
class BudgetLimits:
    """High-water marks and hard limits, in bytes, for one connection and one address."""

    connection_high: int = 1 * MiB
    """Stop reading from a peer holding more than this."""
    connection_hard: int = 4 * MiB
    """Close a connection holding more than this."""
    address_high: int = 16 * MiB
    """Stop reading from every connection of an address holding more than this in total."""
    address_hard: int = 32 * MiB
    """Close the connection that takes an address past this."""

    def __post_init__(self) -> None:
        for kind in ("connection", "address"):
            high, hard = getattr(self, f"{kind}_high"), getattr(self, f"{kind}_hard")
            if not 0 < high <= hard:
                raise ValueError(f"need 0 < {kind}_high <= {kind}_hard, got {high}, {hard}")

    @classmethod
    def for_message_size(cls, max_size: int | None) -> BudgetLimits:
        """Limits in which any legal message fits: the default of a WebSocket server.

        A connection assembling a message of ``max_size`` bytes must never be paused for it
        and stay paused (it resumes under half its high-water mark, and only more input
        completes the message), so ``connection_high = 2 * max_size + 256 KiB`` (at least
        1 MiB). One read can then add a read's bytes plus what it inflates (at most
        ``max(max_size, 1 MiB)`` plus one message of ``max_size``) before the next check, so
        ``connection_hard = 2 * connection_high`` (at least 4 MiB). An address may hold four
        connections at their high-water marks (at least 16 MiB) and twice that at most. With
        ``max_size=None`` (no message limit) any budget could refuse a legal message: the
        limits are then too large ever to pause or refuse (2**62 bytes).
        """
        if max_size is None:
            return cls(_UNBOUNDED, _UNBOUNDED, _UNBOUNDED, _UNBOUNDED)
        high = max(1 * MiB, 2 * max_size + READ_SIZE)
        address_high = max(16 * MiB, 4 * high)
        return cls(high, max(4 * MiB, 2 * high), address_high, 2 * address_high)

    def fits(self, max_size: int | None) -> str | None:
        """Why a legal message of ``max_size`` bytes may not fit these limits (None if it
        does): it could be paused in assembly for good (resuming needs it under half the
        high-water mark) or refused by the hard limit after one read (see
        :meth:`for_message_size`). With ``max_size=None`` the budget is the only bound."""
        if max_size is None:
            return None
        high = 2 * max_size + READ_SIZE
        hard = self.connection_high + READ_SIZE + max(max_size, INFLATED_PER_READ) + max_size
        if self.connection_high >= high and self.connection_hard >= hard:
            return None
        return (
            f"connection_high={self.connection_high}, connection_hard={self.connection_hard} "
            f"leave no room for messages of max_size={max_size}: one that big needs "
            f"connection_high >= {high} and connection_hard >= {hard}, or it may stay paused "
            "until the keepalive fails, or be closed with 1013 "
            "(BudgetLimits.for_message_size gives limits that fit)"
        )


class _Address:
    __slots__ = ("accounts", "held", "key", "paused")

    def __init__(self, key: str) -> None:
        self.key = key
        self.held = 0
        self.accounts = 0
        self.paused: set[Account] = set()


class Account:
    """What one connection (or session) holds; see the module docstring."""

    __slots__ = (
        "_address",
        "_budgets",
        "_pause",
        "_resume",
        "closed",
        "hard",
        "held",
        "high",
        "paused",
        "refused",
    )

    def __init__(
        self,
        budgets: Budgets,
        address: _Address,
        pause: Callable[[], None],
        resume: Callable[[], None],
        high: int,
    ) -> None:
        self._budgets = budgets
        self._address = address
        self._pause = pause
        self._resume = resume
        self.high = high
        self.hard = budgets.limits.connection_hard
        """This account's hard limit (see :meth:`reserve`)."""
        self.held = 0
        """Bytes this account holds now (as last reported)."""
        self.paused = False
        """Whether the owner was told to stop reading (and not yet to start again)."""
        self.refused = False
        """Whether :meth:`hold` ever returned False (counted once in Budgets.exceeded)."""
        self.closed = False

    def reserve(self, nbytes: int) -> None:
        """Raise this account's hard limit by ``nbytes``, for an owner that lets that much
        output queue by design and bounds it itself (e.g. a hub session's outgoing queue,
        with its own slow-consumer policy). The bytes are still charged, to the address too:
        its limits are unchanged."""
        self.hard += nbytes

    @property
    def address_held(self) -> int:
        """Bytes held by every open account of this account's address."""
        return self._address.held

    def hold(self, nbytes: int) -> bool:
        """Report that the owner now holds ``nbytes``; False when over a hard limit."""
        if self.closed:
            return True
        address = self._address
        address.held += nbytes - self.held
        self.held = nbytes
        budgets = self._budgets
        limits = budgets.limits
        if nbytes > self.hard:
            self._refuse("connection")
            return False
        if address.held > limits.address_hard:
            self._refuse("address")
            return False
        if nbytes > self.high or address.held > limits.address_high:
            if not self.paused:
                self.paused = True
                address.paused.add(self)
                budgets.pauses += 1
                self._pause()
        elif address.paused and address.held <= limits.address_high >> 1:
            self._resume_address(address)
        return True

    def _refuse(self, scope: str) -> None:
        if not self.refused:
            self.refused = True
            self._budgets.exceeded[scope] += 1

    def close(self) -> None:
        """The connection is gone: release what it held (and maybe resume the others)."""
        if self.closed:
            return
        self.closed = True
        # The callbacks are usually the owner's bound methods: drop them, so that an owner
        # that keeps its closed account is not kept alive by it (no cycle to collect).
        self._pause = self._resume = _nothing
        address = self._address
        address.held -= self.held
        self.held = 0
        address.paused.discard(self)
        self.paused = False
        address.accounts -= 1
        budgets = self._budgets
        if address.accounts == 0:
            budgets._addresses.pop(address.key, None)
        elif address.paused and address.held <= budgets.limits.address_high >> 1:
            self._resume_address(address)

    def _unpause(self) -> None:
        self.paused = False
        self._address.paused.discard(self)
        self._resume()

    def _resume_address(self, address: _Address) -> None:
        """The address is back under low water: resume its accounts that are under theirs."""
        for account in list(address.paused):
            if account.held <= account.high >> 1 and account.paused and not account.closed:
                account._unpause()


def _nothing() -> None:
    pass


class Budgets:
    """The accounts of one server, grouped by peer address."""

    def __init__(self, limits: BudgetLimits | None = None) -> None:
        self.limits = limits or BudgetLimits()
        self._addresses: dict[str, _Address] = {}
        self.exceeded = {"connection": 0, "address": 0}
        """Connections that went past a hard limit, by the limit's scope (each is closed by
        its owner)."""
        self.pauses = 0
        """Times a peer was told to stop reading."""

    def open(
        self,
        address: str,
        pause: Callable[[], None],
        resume: Callable[[], None],
        *,
        high: int | None = None,
    ) -> Account:
        """A new account under ``address``; ``pause``/``resume`` stop and restart reading.

        ``high`` lowers (never raises) the connection's high-water mark for an owner that
        should push back earlier than the default."""
        entry = self._addresses.get(address)
        if entry is None:
            entry = self._addresses[address] = _Address(address)
        entry.accounts += 1
        limit = self.limits.connection_high
        if high is not None:
            limit = min(high, limit)
        return Account(self, entry, pause, resume, limit)

    def held(self, address: str) -> int:
        """Bytes held for ``address`` now (0 if it has no open account)."""
        entry = self._addresses.get(address)
        return 0 if entry is None else entry.held

    @property
    def addresses(self) -> int:
        """Addresses with at least one open account."""
        return len(self._addresses)

    @property
    def total(self) -> int:
        """Bytes held for every address together."""
        return sum(entry.held for entry in self._addresses.values())
