"""Capacity and use per broker account: which shards are whose, and the figures status and
metrics report for each account.

Shard ids run over the accounts in configured order, `per_account` each (services/common/
accounts.py): shard `s` is connection `s % per_account` of account `s // per_account`. The
budget's connection count may be smaller than accounts x per_account (a test's small budget);
an account then has only the shards the budget counts, and a shard past the accounts has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.config import Settings
from services.common.db import Pool
from services.subscription.ledger import Ledger
from services.subscription.metrics import ACCOUNT_CAPACITY, ACCOUNT_INSTRUMENTS, ACCOUNT_SHARDS_CONNECTED
from services.subscription.model import Budget
from services.subscription.readmodel import ReadModel
from services.subscription.usage_gauges import UsageGauges


@dataclass(frozen=True)
class AccountLayout:
    account_ids: tuple[str, ...]  # names, never client ids
    per_account: int
    connections: int

    @classmethod
    def of(cls, settings: Settings, budget: Budget) -> AccountLayout:
        return cls(
            tuple(a.account_id for a in settings.accounts), settings.feed_connections_per_account, budget.connections
        )

    def place(self, shard_id: int) -> tuple[str, int]:
        """The shard's account ("" past the configured accounts) and connection index."""
        index, connection = divmod(shard_id, self.per_account)
        return (self.account_ids[index] if index < len(self.account_ids) else ""), connection

    def shards(self, account_index: int) -> range:
        start = account_index * self.per_account
        return range(min(start, self.connections), min(start + self.per_account, self.connections))


@dataclass(frozen=True)
class AccountFigures:
    account_id: str
    connection_count: int
    capacity: int
    subscribed: int  # instruments on its shards, moves in flight counted on both sides
    connected_shards: int

    @property
    def utilization(self) -> float:
        return self.subscribed / self.capacity if self.capacity else 0.0


def account_figures(
    layout: AccountLayout, loads: Sequence[int], connected: Sequence[bool], per_connection: int
) -> list[AccountFigures]:
    """Each account's figures from every shard's load and connection (pure), in account order."""
    figures = []
    for index, account_id in enumerate(layout.account_ids):
        shards = layout.shards(index)
        figures.append(
            AccountFigures(
                account_id,
                len(shards),
                len(shards) * per_connection,
                sum(loads[s] for s in shards),
                sum(connected[s] for s in shards),
            )
        )
    return figures


class AccountGauges:
    """Publishes each account's figures as gauges, and the budget's use by tier, shard and user;
    the upkeep calls `refresh` on its period."""

    def __init__(self, pool: Pool, budget: Budget, layout: AccountLayout) -> None:
        self._pool = pool
        self._budget = budget
        self._layout = layout
        self._usage = UsageGauges(ReadModel(pool))

    async def refresh(self) -> None:
        async with Ledger.unlocked(self._pool, self._budget) as reader:
            loads = await reader.shard_loads()
            health = await reader.shard_health()
        connected = [condition.connected for condition in health.shards]
        for figures in account_figures(self._layout, loads, connected, self._budget.per_connection):
            ACCOUNT_INSTRUMENTS.labels(figures.account_id).set(figures.subscribed)
            ACCOUNT_CAPACITY.labels(figures.account_id).set(figures.capacity)
            ACCOUNT_SHARDS_CONNECTED.labels(figures.account_id).set(figures.connected_shards)
        await self._usage.refresh(loads, [self._layout.place(shard)[0] for shard in range(len(loads))])
