"""The SubscriptionService RPCs: authorisation and validation here, the work in the modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, timedelta

import grpc
from dataserver.subscription.v1 import subscription_pb2 as pb
from dataserver.subscription.v1 import subscription_pb2_grpc
from google.protobuf.json_format import MessageToDict, ParseDict

from services.common.auth import acting_user, current_principal, require_privileged
from services.common.clock import Clock, trading_date_of
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.keys import key_from_proto, key_proto
from services.common.pagination import (
    decode_page_token,
    encode_page_token,
    fingerprint,
    next_token,
    page_size,
)
from services.subscription import convert
from services.subscription.admin import Admin, check_after_close
from services.subscription.credentials import Credentials, fill_account_versions
from services.subscription.model import Budget, Eviction
from services.subscription.recenter import Recentering, RecenterOutcome
from services.subscription.reports import Reports
from services.subscription.shard_health import HealthReports
from services.subscription.streams import Streams
from services.subscription.tier_b import ChainSpec, TierB
from services.subscription.visibility import redact_owners, visible_history
from services.subscription.watchlists import Watchlists

ALL_USERS = "-"


def _user_scope(requested: str) -> str | None:
    """None (all users) for "-", which only admins may ask for; otherwise the acting user."""
    if requested == ALL_USERS:
        require_privileged("reading every user's data")
        return None
    return acting_user(requested)


def _date_or_today(requested: str, clock: Clock) -> date:
    if not requested:
        return trading_date_of(clock)
    try:
        return date.fromisoformat(requested)
    except ValueError:
        raise InvalidArgument(f"trading_date {requested!r} is malformed: expected YYYY-MM-DD") from None


def _recenter_result(outcome: RecenterOutcome) -> pb.RecenterResult:
    return pb.RecenterResult(
        item_id=str(outcome.item_id or ""),
        plan_entry_id=outcome.entry_id or "",
        underlying_symbol=outcome.symbol,
        expiry_date=outcome.expiry,
        underlying_price=outcome.price,
        price_source=outcome.price_source,
        old_atm_strike=outcome.old_atm or 0.0,
        new_atm_strike=outcome.new_atm or 0.0,
        moved=outcome.moved,
        instruments_added=outcome.added,
        instruments_removed=outcome.removed,
    )


class SubscriptionServicer(subscription_pb2_grpc.SubscriptionServiceServicer):
    def __init__(
        self,
        budget: Budget,
        watchlists: Watchlists,
        tier_b: TierB,
        recentering: Recentering,
        admin: Admin,
        reports: Reports,
        streams: Streams,
        clock: Clock,
        health: HealthReports,
        credentials: Credentials,
    ) -> None:
        self._budget = budget
        self._watchlists = watchlists
        self._tier_b = tier_b
        self._recentering = recentering
        self._admin = admin
        self._reports = reports
        self._streams = streams
        self._clock = clock
        self._health = health
        self._credentials = credentials

    def _evictions(self, evictions: list[Eviction], caller: str) -> list[pb.EvictedUnit]:
        admin = current_principal().privileged
        return [convert.evicted_unit(e, show_user=admin or e.user_id == caller) for e in evictions]

    # -- Tier A ---------------------------------------------------------------------------

    async def AddWatchlistItem(
        self, request: pb.AddWatchlistItemRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddWatchlistItemResponse:
        user = acting_user(request.user_id)
        outcome = await self._watchlists.add(
            user,
            current_principal().user_id,
            symbol=request.symbol,
            expiry=request.expiry_date,
            strikes_each_side=request.strikes_each_side,
            price_hint=request.underlying_price,
            underlying_only=request.underlying_only,
            mode=convert.mode_from_proto(request.mode),
        )
        return pb.AddWatchlistItemResponse(
            watchlist_item=convert.watchlist_item(outcome.item, outcome.instruments),
            created=outcome.created,
            evictions=self._evictions(outcome.evictions, user),
        )

    async def RemoveWatchlistItem(
        self, request: pb.RemoveWatchlistItemRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveWatchlistItemResponse:
        user = acting_user(request.user_id)
        released = await self._watchlists.remove(user, current_principal().user_id, request.item_id)
        return pb.RemoveWatchlistItemResponse(instruments_released=released)

    async def ListWatchlistItems(
        self, request: pb.ListWatchlistItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWatchlistItemsResponse:
        user = _user_scope(request.user_id)
        size = page_size(request.page_size, default=50, maximum=500)
        state = convert.PROTO_TO_STATE.get(request.state)
        key = fingerprint(user, state, request.include_instruments)
        offset = decode_page_token(request.page_token, key)
        items, total = await self._watchlists.list(user, state, offset, size)
        instruments = (
            await self._watchlists.instruments_of([i["item_id"] for i in items]) if request.include_instruments else {}
        )
        return pb.ListWatchlistItemsResponse(
            watchlist_items=[convert.watchlist_item(i, instruments.get(i["item_id"])) for i in items],
            next_page_token=next_token(offset, len(items), total, key),
            total_size=total,
        )

    async def RecordUsage(
        self, request: pb.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordUsageResponse:
        user = acting_user(request.user_id)
        touched = 0
        if request.item_ids:
            ids = []
            for item_id in request.item_ids:
                try:
                    ids.append(int(item_id))
                except ValueError:
                    raise InvalidArgument(f"item_id {item_id!r} is malformed: expected a numeric id") from None
            touched += await self._watchlists.record_usage(user, ids)
        if request.keys:
            touched += await self._watchlists.touch_holding(user, [key_from_proto(k, "keys") for k in request.keys])
        return pb.RecordUsageResponse(units_touched=touched)

    # -- reports --------------------------------------------------------------------------

    async def GetSubscriptionStatus(
        self, request: pb.GetSubscriptionStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSubscriptionStatusResponse:
        status = await self._reports.status()
        fill_account_versions(status, await self._credentials.versions())
        principal = current_principal()
        if not principal.privileged:  # users see their own row only
            mine = [u for u in status.users if u.user_id == principal.user_id]
            del status.users[:]
            status.users.extend(mine)
        return status

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSubscriptionsResponse:
        user = acting_user(request.user_id) if request.user_id else None
        if request.HasField("shard_id") and not 0 <= request.shard_id < self._budget.connections:
            raise InvalidArgument(
                f"shard_id {request.shard_id} is out of range: accepted 0..{self._budget.connections - 1}"
            )
        tier = convert.PROTO_TO_TIER.get(request.tier)
        shard = request.shard_id if request.HasField("shard_id") else None
        size = page_size(request.page_size, default=100, maximum=1000)
        key = fingerprint(tier, shard, user)
        offset = decode_page_token(request.page_token, key)
        subscriptions, total = await self._reports.subscriptions(
            tier=tier, shard_id=shard, user_id=user, offset=offset, limit=size
        )
        principal = current_principal()
        if not principal.privileged:
            for subscription in subscriptions:
                redact_owners(subscription, principal.user_id)
        return pb.ListSubscriptionsResponse(
            subscriptions=subscriptions,
            next_page_token=next_token(offset, len(subscriptions), total, key),
            total_size=total,
        )

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSubscriptionResponse:
        key = key_from_proto(request.key)
        if request.history_limit < 0:
            raise InvalidArgument("history_limit must not be negative; 0 means 50")
        subscription = await self._reports.subscription(key)
        if subscription is None:
            raise NotFound(f"{key[0]} {key[1]} is not subscribed")
        rows = await self._reports.audit(
            segment=key[0],
            security_id=key[1],
            action=None,
            tier=None,
            user_id=None,
            unit_id=None,
            start=None,
            end=None,
            before=None,
            limit=min(request.history_limit or 50, 1000),
        )
        history = [convert.audit_entry(r) for r in rows]
        principal = current_principal()
        if not principal.privileged:
            redact_owners(subscription, principal.user_id)
            history = visible_history(history, principal.user_id)
        return pb.GetSubscriptionResponse(subscription=subscription, history=history)

    async def ListAuditEntries(
        self, request: pb.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEntriesResponse:
        principal = current_principal()
        user = request.user_id or None
        if not principal.privileged and user != principal.user_id:
            raise PermissionDenied("only admins may read the whole audit log; set user_id to your own id")
        key = key_from_proto(request.key) if request.HasField("key") else None
        size = page_size(request.page_size, default=100, maximum=1000)
        request_key = fingerprint(
            key,
            request.action,
            request.tier,
            user,
            request.item_id,
            request.start_time.ToJsonString(),
            request.end_time.ToJsonString(),
        )
        before = decode_page_token(request.page_token, request_key) or None
        rows = await self._reports.audit(
            segment=key[0] if key else None,
            security_id=key[1] if key else None,
            action=convert.PROTO_TO_ACTION.get(request.action),
            tier=convert.PROTO_TO_TIER.get(request.tier),
            user_id=user,
            unit_id=int(request.item_id) if request.item_id.isdigit() else None,
            start=request.start_time.ToDatetime() if request.HasField("start_time") else None,
            end=request.end_time.ToDatetime() if request.HasField("end_time") else None,
            before=before,
            limit=size,
        )
        token = encode_page_token(rows[-1]["log_id"], request_key) if len(rows) == size else ""
        return pb.ListAuditEntriesResponse(audit_entries=[convert.audit_entry(r) for r in rows], next_page_token=token)

    # -- Tier B and re-centring -------------------------------------------------------------

    async def SetTierBPlan(
        self, request: pb.SetTierBPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetTierBPlanResponse:
        principal = require_privileged("SetTierBPlan")
        entries = []
        for chain in request.chains:
            spec = ChainSpec(
                symbol=chain.underlying_symbol.strip().upper(),
                expiry_dates=tuple(chain.expiry_dates.expiry_dates) if chain.HasField("expiry_dates") else (),
                nearest=chain.nearest_expiries,
                strikes_each_side=chain.strikes_each_side or self._tier_b_width(),
                include_underlying=chain.include_underlying,
                mode=convert.mode_from_proto(chain.mode),
                nearest_futures=chain.nearest_futures,
            )
            if not spec.symbol:
                raise InvalidArgument("every chain needs an underlying_symbol, e.g. NIFTY")
            if not 1 <= spec.strikes_each_side <= self._max_width():
                raise InvalidArgument(
                    f"strikes_each_side {spec.strikes_each_side} is out of range: accepted 1..{self._max_width()}"
                )
            entries += await self._tier_b.resolve_chain(spec)
        for instrument in request.instruments:
            entries.append(
                await self._tier_b.resolve_instrument(
                    key_from_proto(instrument.key, "instruments.key"), convert.mode_from_proto(instrument.mode)
                )
            )
        plan = MessageToDict(request, preserving_proto_field_name=True)
        plan.pop("dry_run", None)
        outcome = await self._tier_b.apply(entries, plan, principal.user_id, dry_run=request.dry_run)
        return pb.SetTierBPlanResponse(
            instruments_added=outcome.added,
            instruments_removed=outcome.removed,
            instruments_kept=outcome.kept,
            instrument_count=outcome.added + outcome.kept,
            evictions=self._evictions(outcome.evictions, principal.user_id),
            chains=[
                pb.ResolvedChain(
                    plan_entry_id=e.entry_id,
                    underlying_symbol=e.unit.symbol,
                    underlying=key_proto(e.unit.underlying.key),
                    expiry_date=e.unit.expiry.isoformat() if e.unit.expiry else "",
                    atm_strike=e.unit.atm_strike or 0.0,
                    strikes_each_side=e.unit.strikes_each_side,
                    instrument_count=len(e.instruments),
                )
                for e in outcome.entries
                if e.unit is not None
            ],
        )

    async def GetTierBPlan(
        self, request: pb.GetTierBPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTierBPlanResponse:
        plan, entries, count = await self._tier_b.current()
        response = pb.GetTierBPlanResponse(instrument_count=count)
        if plan is not None:
            stored = pb.SetTierBPlanRequest()
            ParseDict(plan["request"], stored)
            response.chains.extend(stored.chains)
            response.instruments.extend(stored.instruments)
            response.updated_at.FromDatetime(plan["updated_at"])
        for row in entries:
            if row["kind"] == "chain":
                response.resolved_chains.append(
                    pb.ResolvedChain(
                        plan_entry_id=row["entry_id"],
                        underlying_symbol=row["underlying_symbol"],
                        underlying=key_proto((row["underlying_segment"], row["underlying_security_id"])),
                        expiry_date=row["expiry_date"].isoformat(),
                        atm_strike=row["atm_strike"] or 0.0,
                        strikes_each_side=row["strikes_each_side"],
                        instrument_count=row["instrument_count"],
                    )
                )
        return response

    async def RecenterChain(
        self, request: pb.RecenterChainRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecenterChainResponse:
        principal = current_principal()
        target = request.WhichOneof("target")
        if target == "tier_b_chain":
            require_privileged("RecenterChain of a Tier B chain")
        price = request.underlying_price if request.WhichOneof("price") == "underlying_price" else 0.0
        if request.WhichOneof("price") == "underlying_price" and price <= 0:
            raise InvalidArgument(f"underlying_price {price} must be positive, or set use_last_price")
        hysteresis = request.hysteresis_strikes if request.HasField("hysteresis_strikes") else None
        if hysteresis is not None and hysteresis < 0:
            raise InvalidArgument("hysteresis_strikes must not be negative")
        if target == "item_id":
            if not request.item_id.isdigit():
                raise InvalidArgument(f"item_id {request.item_id!r} is malformed: expected a numeric id")
            outcome = await self._recentering.unit(
                int(request.item_id),
                principal.user_id,
                price=price,
                hysteresis=hysteresis,
                owner=None if principal.privileged else principal.user_id,
            )
        elif target == "tier_b_chain":
            ref = request.tier_b_chain
            outcome = await self._recentering.tier_b_chain(
                ref.underlying_symbol, ref.expiry_date, principal.user_id, price=price, hysteresis=hysteresis
            )
        else:
            raise InvalidArgument(
                "set target: item_id (a Tier A unit) or tier_b_chain (underlying_symbol and expiry_date)"
            )
        return pb.RecenterChainResponse(
            result=_recenter_result(outcome), evictions=self._evictions(outcome.evictions, principal.user_id)
        )

    async def RecenterAllChains(
        self, request: pb.RecenterAllChainsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecenterAllChainsResponse:
        principal = require_privileged("RecenterAllChains")
        tiers = {pb.TIER_A: ("A",), pb.TIER_B: ("B",)}.get(request.tier, ("A", "B"))
        hysteresis = request.hysteresis_strikes if request.HasField("hysteresis_strikes") else None
        if hysteresis is not None and hysteresis < 0:
            raise InvalidArgument("hysteresis_strikes must not be negative")
        sweep = await self._recentering.all_chains(principal.user_id, tiers=tiers, hysteresis=hysteresis)
        evictions = [e for m in sweep.moved for e in m.evictions]
        return pb.RecenterAllChainsResponse(
            chains_checked=sweep.checked,
            chains_moved=len(sweep.moved),
            moved=[_recenter_result(m) for m in sweep.moved],
            evictions=self._evictions(evictions, principal.user_id),
            chains_skipped=dict(sweep.skipped),
        )

    # -- admin ----------------------------------------------------------------------------

    async def EndOfDay(self, request: pb.EndOfDayRequest, context: grpc.aio.ServicerContext) -> pb.EndOfDayResponse:
        principal = require_privileged("EndOfDay")
        trading_date = _date_or_today(request.trading_date, self._clock)
        if not request.force:
            check_after_close(trading_date, self._clock.now())
        outcome = await self._admin.end_of_day(trading_date, principal.user_id, keep_items=request.keep_watchlist_items)
        return pb.EndOfDayResponse(
            trading_date=trading_date.isoformat(),
            already_done=outcome.already_done,
            units_unsubscribed=outcome.counts.units,
            instruments_unsubscribed=outcome.counts.instruments,
            items_deleted=outcome.counts.items_deleted,
            users_affected=outcome.counts.users,
        )

    async def ReleaseExpired(
        self, request: pb.ReleaseExpiredRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseExpiredResponse:
        principal = require_privileged("ReleaseExpired")
        trading_date = _date_or_today(request.trading_date, self._clock)
        outcome = await self._admin.release_expired(trading_date, principal.user_id)
        return pb.ReleaseExpiredResponse(
            trading_date=trading_date.isoformat(),
            units_evicted=outcome.units_evicted,
            chains_removed=outcome.chains_removed,
            instruments_unsubscribed=outcome.instruments_unsubscribed,
        )

    async def UnsubscribeAllTierA(
        self, request: pb.UnsubscribeAllTierARequest, context: grpc.aio.ServicerContext
    ) -> pb.UnsubscribeAllTierAResponse:
        principal = require_privileged("UnsubscribeAllTierA")
        counts = await self._admin.unsubscribe_tier_a(request.user_id or None, principal.user_id, request.reason)
        return pb.UnsubscribeAllTierAResponse(
            units_unsubscribed=counts.units, instruments_unsubscribed=counts.instruments, users_affected=counts.users
        )

    async def ClearWatchlists(
        self, request: pb.ClearWatchlistsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearWatchlistsResponse:
        principal = require_privileged("ClearWatchlists")
        scope = request.WhichOneof("scope")
        if (
            scope is None
            or (scope == "all_users" and not request.all_users)
            or (scope == "user_id" and not request.user_id)
        ):
            raise InvalidArgument("set scope: user_id (one user's watchlist) or all_users: true")
        counts = await self._admin.clear_watchlists(request.user_id if scope == "user_id" else None, principal.user_id)
        return pb.ClearWatchlistsResponse(
            items_deleted=counts.items_deleted, instruments_unsubscribed=counts.instruments, users_affected=counts.users
        )

    async def Rebalance(self, request: pb.RebalanceRequest, context: grpc.aio.ServicerContext) -> pb.RebalanceResponse:
        principal = require_privileged("Rebalance")
        if request.max_moves < 0:
            raise InvalidArgument("max_moves must not be negative; 0 means no limit")
        outcome = await self._admin.rebalance(principal.user_id, dry_run=request.dry_run, max_moves=request.max_moves)
        return pb.RebalanceResponse(
            moves=[pb.ShardMove(key=key_proto(k), from_shard_id=s, to_shard_id=t) for k, s, t in outcome.moves],
            spread_before=outcome.spread_before,
            spread_after=outcome.spread_after,
        )

    # -- streams --------------------------------------------------------------------------

    async def WatchAssignments(
        self, request: pb.WatchAssignmentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchAssignmentsResponse]:
        require_privileged("WatchAssignments (feed shards use a service key)")
        if not 0 <= request.shard_id < self._budget.connections:
            raise InvalidArgument(
                f"shard_id {request.shard_id} is out of range: accepted 0..{self._budget.connections - 1}"
            )
        async for message in self._streams.assignments(request.shard_id):
            yield message

    async def ReportShardHealth(
        self, request: pb.ReportShardHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportShardHealthResponse:
        require_privileged("ReportShardHealth (feed shards use a service key)")
        if not 0 <= request.shard_id < self._budget.connections:
            raise InvalidArgument(
                f"shard_id {request.shard_id} is out of range: accepted 0..{self._budget.connections - 1}"
            )
        if not request.shard_epoch:
            raise InvalidArgument("shard_epoch is required: the reporting process's incarnation id")
        down_since = None
        if not request.connected and request.HasField("down_since"):
            down_since = request.down_since.ToDatetime(tzinfo=UTC)
        await self._health.record(request.shard_id, request.shard_epoch, request.connected, down_since, request.reason)
        response = pb.ReportShardHealthResponse()
        response.report_interval.FromTimedelta(timedelta(seconds=self._health.interval_seconds))
        # Version 0 for an account not configured here (or none sent): the report itself still
        # counts, since failover depends on it.
        if request.account_id in self._credentials.account_ids:
            response.credentials_version = await self._credentials.version(request.account_id)
        return response

    # -- broker account credentials -------------------------------------------------------

    async def RotateAccessToken(
        self, request: pb.RotateAccessTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateAccessTokenResponse:
        principal = require_privileged("RotateAccessToken (admins, or the feed shards' service key)")
        rotated = await self._credentials.rotate(request.account_id, request.access_token, principal.user_id)
        response = pb.RotateAccessTokenResponse(account_id=rotated.account_id, credentials_version=rotated.version)
        if rotated.rotated_at is not None:
            response.rotated_at.FromDatetime(rotated.rotated_at)
        return response

    async def GetAccountCredentials(
        self, request: pb.GetAccountCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountCredentialsResponse:
        require_privileged("GetAccountCredentials (the feed shards' service key)")
        current = await self._credentials.current(request.account_id)
        response = pb.GetAccountCredentialsResponse(
            account_id=current.account_id, access_token=current.token, credentials_version=current.version
        )
        response.rotated_at.FromDatetime(current.rotated_at)
        return response

    async def WatchWatchlistEvents(
        self, request: pb.WatchWatchlistEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchWatchlistEventsResponse]:
        user = _user_scope(request.user_id)
        async for message in self._streams.watchlist_events(user):
            yield message

    def _tier_b_width(self) -> int:
        return self._tier_b.default_width

    def _max_width(self) -> int:
        return self._tier_b.max_width
