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
  :attr:`Budgets.exceeded`. An account paused for its own sake also waits for its address to
  be under half its high-water mark: resuming is the conservative side.

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


class _Address:
    __slots__ = ("accounts", "held", "key", "paused")

    def __init__(self, key: str) -> None:
        self.key = key
        self.held = 0
        self.accounts = 0
        self.paused: set[Account] = set()


class Account:
    """What one connection (or session) holds; see the module docstring."""

    __slots__ = ("_address", "_budgets", "_pause", "_resume", "closed", "held", "high", "paused")

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
        self.held = 0
        """Bytes this account holds now (as last reported)."""
        self.paused = False
        """Whether the owner was told to stop reading (and not yet to start again)."""
        self.closed = False

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
        if nbytes > limits.connection_hard:
            budgets.exceeded["connection"] += 1
            return False
        if address.held > limits.address_hard:
            budgets.exceeded["address"] += 1
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

    def close(self) -> None:
        """The connection is gone: release what it held (and maybe resume the others)."""
        if self.closed:
            return
        self.closed = True
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
