"""Output tokens that are settled but not yet written: a per-account ledger of debts.

Charging a stream's output tokens the moment it ends would cost a second Redis round
trip per request. Instead the debt waits here, per account, and rides along with that
account's next decision as debt-only charges in the same script call (same hash tag, same
slot); accounts with no traffic are flushed on their own after `delay_s`. A debt is thus
applied at most `delay_s` late, and is lost only if the gateway replica dies inside that
window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from museserve.gateway.ratelimit import Charge, Limit


class DebtLedger:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._debts: dict[str, dict[str, tuple[Limit, float]]] = {}  # account -> limit key -> (limit, units)
        self._since: dict[str, float] = {}  # account -> when its oldest unsent debt arrived

    def __len__(self) -> int:
        return len(self._debts)

    def add(self, account: str, debts: Iterable[Charge]) -> None:
        """Adds each charge's amount (and debt) as debt of the account."""
        entry = self._debts.setdefault(account, {})
        self._since.setdefault(account, self._clock())
        for charge in debts:
            units = charge.amount + charge.debt
            if units <= 0:
                continue
            _, owed = entry.get(charge.limit.key, (charge.limit, 0.0))
            entry[charge.limit.key] = (charge.limit, owed + units)
        if not entry:
            del self._debts[account]
            del self._since[account]

    def take(self, account: str) -> dict[str, tuple[Limit, float]]:
        """Removes and returns the account's debts by limit key."""
        self._since.pop(account, None)
        return self._debts.pop(account, {})

    def due(self, older_than_s: float) -> list[str]:
        """Accounts whose oldest debt has waited at least `older_than_s`."""
        cutoff = self._clock() - older_than_s
        return [account for account, since in self._since.items() if since <= cutoff]

    def accounts(self) -> list[str]:
        return list(self._debts)


def with_debts(charges: list[Charge], debts: dict[str, tuple[Limit, float]]) -> list[Charge]:
    """`charges` carrying the debts of their limits, plus debt-only charges for the rest."""
    merged = [Charge(c.limit, c.amount, c.debt + debts.get(c.limit.key, (c.limit, 0.0))[1]) for c in charges]
    charged = {c.limit.key for c in charges}
    merged += [Charge(limit, 0.0, units) for key, (limit, units) in debts.items() if key not in charged]
    return merged


def as_debts(charges: Iterable[Charge]) -> list[Charge]:
    """Charges turned into debt-only ones (amounts are due whatever any decision says)."""
    return [Charge(c.limit, 0.0, c.amount + c.debt) for c in charges if c.amount + c.debt > 0]
