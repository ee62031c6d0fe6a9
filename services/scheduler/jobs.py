"""What each job does: calls to the registry and the subscription service, and the counts
its run records. When a job runs is in `catalog.py`; recording and exactly-once in `runner.py`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time

import grpc
from dataserver.common.v1 import common_pb2
from dataserver.registry.v1 import registry_pb2, registry_pb2_grpc
from dataserver.subscription.v1 import subscription_pb2 as pb
from dataserver.subscription.v1 import subscription_pb2_grpc

from services.common.clients import ServiceCaller
from services.common.errors import NotFound
from services.common.market_calendar import IST
from services.scheduler.plan import without_mcx

log = logging.getLogger(__name__)

PlanSource = Callable[[], pb.SetTierBPlanRequest]


@dataclass(frozen=True)
class JobResult:
    counts: dict[str, int] = field(default_factory=dict)
    skipped: str = ""  # why the run did nothing, by design


def plan_counts(reply: pb.SetTierBPlanResponse, request: pb.SetTierBPlanRequest) -> dict[str, int]:
    """What a plan replacement did, and how many instruments each part of the plan took
    ("chain:<underlying>" over its expiries; parts may share an instrument, e.g. an index
    value that is also a chain's underlying, so only instruments_total is distinct)."""
    counts = Counter[str](
        instruments_added=reply.instruments_added,
        instruments_removed=reply.instruments_removed,
        instruments_kept=reply.instruments_kept,
        instruments_total=reply.instruments_added + reply.instruments_kept,
        evictions=len(reply.evictions),
        chains=len(reply.chains),
        instruments=len(request.instruments),
    )
    for chain in reply.chains:
        counts[f"chain:{chain.underlying_symbol}"] += chain.instrument_count
    return dict(counts)


def _without_mcx(plan: pb.GetTierBPlanResponse) -> pb.SetTierBPlanRequest:
    """The plan in force less its MCX parts: the chains whose resolved underlying trades on
    MCX, and MCX instruments."""
    mcx = common_pb2.EXCHANGE_SEGMENT_MCX_COMM
    symbols = {c.underlying_symbol for c in plan.resolved_chains if c.underlying.exchange_segment == mcx}
    return without_mcx(pb.SetTierBPlanRequest(chains=plan.chains, instruments=plan.instruments), symbols)


def unexpired(plan: pb.GetTierBPlanResponse, trading_date: date) -> pb.SetTierBPlanRequest:
    """The plan in force, less explicit expiry dates before the trading date (the new master
    no longer lists them, so the plan would be refused); a chain left with none goes."""
    today = trading_date.isoformat()
    chains = []
    for chain in plan.chains:
        kept = pb.TierBChain()
        kept.CopyFrom(chain)
        if chain.HasField("expiry_dates"):
            del kept.expiry_dates.expiry_dates[:]
            kept.expiry_dates.expiry_dates.extend(d for d in chain.expiry_dates.expiry_dates if d >= today)
            if not kept.expiry_dates.expiry_dates:
                continue
        chains.append(kept)
    return pb.SetTierBPlanRequest(chains=chains, instruments=plan.instruments)


class Jobs:
    """The jobs' actions, each returning the counts its run records."""

    def __init__(
        self,
        registry: grpc.aio.Channel,
        subscription: grpc.aio.Channel,
        token: str | None,
        *,
        plan: PlanSource,
        timeout: float,
        hysteresis_strikes: float | None,
        reload_at: time,
    ) -> None:
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._subscription = subscription_pb2_grpc.SubscriptionServiceStub(subscription)
        self._to_registry = ServiceCaller("registry", token, timeout)
        self._to_subscription = ServiceCaller("subscription", token, timeout)
        self._plan = plan
        self._hysteresis = hysteresis_strikes
        self._reload_at = reload_at

    async def _set_plan(self, request: pb.SetTierBPlanRequest) -> dict[str, int]:
        reply = await self._to_subscription.call(self._subscription.SetTierBPlan, request)
        return plan_counts(reply, request)

    async def _plan_in_force(self) -> pb.GetTierBPlanResponse:
        return await self._to_subscription.call(self._subscription.GetTierBPlan, pb.GetTierBPlanRequest())

    async def reload_master(self, trading_date: date) -> JobResult:
        """The configured source's master for the date; what is on an expired expiry released
        with that reason (Tier A units evicted as EXPIRED, Tier B chains removed: expired
        contracts no longer trade, so nothing is lost by releasing them first); then the plan
        in force sent again so that chains re-resolve their nearest expiries (the expired one
        rolls to the next). A master of that date loaded since the job's time (a registry
        started late) is kept."""
        status = (
            await self._to_registry.call(self._registry.GetMasterStatus, registry_pb2.GetMasterStatusRequest())
        ).status
        due = datetime.combine(trading_date, self._reload_at, IST)
        fresh = status.trading_date == trading_date.isoformat() and status.loaded_at.ToDatetime(UTC) >= due
        if not fresh:
            status = (
                await self._to_registry.call(
                    self._registry.ReloadMaster, registry_pb2.ReloadMasterRequest(trading_date=trading_date.isoformat())
                )
            ).status
        counts = {
            "master_reloaded": int(not fresh),
            "master_rows": status.row_count,
            "master_rejected": status.rejected_count,
            "master_version": status.version,
        }
        expired = await self._to_subscription.call(
            self._subscription.ReleaseExpired, pb.ReleaseExpiredRequest(trading_date=trading_date.isoformat())
        )
        counts |= {
            "expired_units_evicted": expired.units_evicted,
            "expired_chains_removed": expired.chains_removed,
            "expired_instruments_unsubscribed": expired.instruments_unsubscribed,
        }
        plan = await self._plan_in_force()
        if plan.chains or plan.instruments:
            counts |= await self._set_plan(unexpired(plan, trading_date))
        return JobResult(counts)

    async def preload_tier_b(self, trading_date: date) -> JobResult:
        """The plan, as one make-before-break replacement, less the chains whose underlying
        the master does not list (each counted as left out, so one missing underlying does
        not keep the rest of Tier B from loading)."""
        plan = self._plan()
        left_out = [c.underlying_symbol for c in plan.chains if not await self._lists_options(c.underlying_symbol)]
        if left_out:
            log.warning("not in the master; left out of the Tier B preload", extra={"underlyings": left_out})
            plan = pb.SetTierBPlanRequest(
                chains=[c for c in plan.chains if c.underlying_symbol not in left_out], instruments=plan.instruments
            )
        counts = await self._set_plan(plan)
        return JobResult(counts | {f"left_out:{symbol}": 1 for symbol in left_out})

    async def _lists_options(self, underlying: str) -> bool:
        request = registry_pb2.ListExpiriesRequest(
            underlying_symbol=underlying, kind=registry_pb2.DERIVATIVE_KIND_OPTIONS
        )
        try:
            reply = await self._to_registry.call(self._registry.ListExpiries, request)
        except NotFound:
            return False
        return len(reply.expiries) > 0

    async def recenter_chains(self, trading_date: date) -> JobResult:
        """Every Tier A unit and Tier B chain whose underlying has moved far enough."""
        request = pb.RecenterAllChainsRequest()
        if self._hysteresis is not None:
            request.hysteresis_strikes = self._hysteresis
        reply = await self._to_subscription.call(self._subscription.RecenterAllChains, request)
        return JobResult(
            {
                "chains_checked": reply.chains_checked,
                "chains_moved": reply.chains_moved,
                "instruments_added": sum(m.instruments_added for m in reply.moved),
                "instruments_removed": sum(m.instruments_removed for m in reply.moved),
                "evictions": len(reply.evictions),
            }
            | {f"skipped:{reason}": n for reason, n in reply.chains_skipped.items()}
        )

    async def end_of_day(self, trading_date: date) -> JobResult:
        """Tier A cleared for the date; Tier B stays. The scheduler decides when the close
        is, so it always forces."""
        request = pb.EndOfDayRequest(trading_date=trading_date.isoformat(), force=True)
        reply = await self._to_subscription.call(self._subscription.EndOfDay, request)
        return JobResult(
            {
                "units_unsubscribed": reply.units_unsubscribed,
                "instruments_unsubscribed": reply.instruments_unsubscribed,
                "items_deleted": reply.items_deleted,
                "users_affected": reply.users_affected,
                "already_done": int(reply.already_done),
            }
        )

    async def release_mcx(self, trading_date: date) -> JobResult:
        """The plan in force sent again without its MCX parts, until the next preload."""
        plan = await self._plan_in_force()
        kept = _without_mcx(plan)
        released = (len(plan.chains) - len(kept.chains)) + (len(plan.instruments) - len(kept.instruments))
        if released == 0:
            return JobResult(skipped="the Tier B plan in force has no MCX chains or instruments")
        return JobResult(await self._set_plan(kept) | {"mcx_parts_released": released})
