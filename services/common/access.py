"""Which role each RPC needs: the one table, enforced by the interceptor before a servicer runs.

Every RPC of every service is listed, as open to users (a terminal, acting on its own data;
the servicer checks whose data) or privileged (admin or service: the internal RPCs). An RPC
missing from the table is privileged, so a new RPC is closed until someone opens it here
(tests/test_security.py fails on an unlisted RPC).
"""

from __future__ import annotations

from services.common.auth import Principal
from services.common.errors import PermissionDenied

_SUBSCRIPTION = "dataserver.subscription.v1.SubscriptionService"
_REGISTRY = "dataserver.registry.v1.RegistryService"
_SCHEDULER = "dataserver.scheduler.v1.SchedulerService"
_GATEWAY = "dataserver.feed.v1.GatewayService"
_SHARD = "dataserver.feed.v1.ShardService"


def _methods(service: str, *names: str) -> frozenset[str]:
    return frozenset(f"/{service}/{name}" for name in names)


# A user may call these for their own data (the servicers refuse another user's).
USER_RPCS = (
    _methods(
        _SUBSCRIPTION,
        "AddWatchlistItem",
        "RemoveWatchlistItem",
        "ListWatchlistItems",
        "RecordUsage",
        "GetSubscriptionStatus",
        "ListSubscriptions",
        "GetSubscription",
        "ListAuditEntries",
        "GetTierBPlan",
        "RecenterChain",  # own items only; a Tier B chain is privileged (the servicer checks)
        "WatchWatchlistEvents",  # own events only; every user's ("-") is privileged
    )
    | _methods(
        _REGISTRY,
        "SearchInstruments",
        "GetInstrument",
        "ResolveTradingSymbol",
        "ListExpiries",
        "GetOptionChain",
        "GetMasterStatus",
    )
    | _methods(_SCHEDULER, "ListJobs", "ListJobRuns")
    | _methods(
        _GATEWAY,
        "StreamTicks",
        "InteractiveStreamTicks",
        "GetSnapshot",
        "GetShardStatus",
        "GetMarketState",
        "StreamOptionChain",
    )
)

# Admin or service only.
PRIVILEGED_RPCS = (
    _methods(
        _SUBSCRIPTION,
        "SetTierBPlan",
        "RecenterAllChains",
        "EndOfDay",
        "ReleaseExpired",
        "UnsubscribeAllTierA",
        "ClearWatchlists",
        "Rebalance",
        "WatchAssignments",
        "ReportShardHealth",
        "RotateAccessToken",
        "GetAccountCredentials",
    )
    | _methods(_REGISTRY, "ReloadMaster")
    | _methods(_SCHEDULER, "RunJob")
    | _methods(_SHARD, "StreamShardTicks", "GetStatus")
)

# The user RPCs that change subscriptions: rate limited per user (services/common/ratelimit.py).
RATE_LIMITED_RPCS = _methods(_SUBSCRIPTION, "AddWatchlistItem", "RemoveWatchlistItem", "RecenterChain")


def check_access(method: str, principal: Principal) -> None:
    """PERMISSION_DENIED when `principal` may not call `method` at all."""
    if principal.privileged or method in USER_RPCS:
        return
    raise PermissionDenied(
        f"{method} needs the admin or service role; caller {principal.user_id!r} has role {principal.role!r}"
    )
