"""Settings read once from the environment and checked at start-up.

Every service calls `load_settings()` in its `serve()` and passes the result down; nothing
else reads `os.environ`, so a bad value fails the process before it serves anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any, TypeVar

from services.common.accounts import SIMULATED, Account, AccountsError, ShardPlace, load_accounts, shard_place
from services.common.market_calendar import MCX_CLOSE, MCX_CLOSE_US_WINTER

N = TypeVar("N", int, float)

REPO_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """An environment variable has a value the service cannot run with."""


@dataclass(frozen=True)
class Settings:
    # Postgres; None means start the embedded server under data_dir.
    database_url: str | None = None
    data_dir: Path = REPO_ROOT / "var"
    log_level: str = "INFO"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0
    metrics_port: int = 0
    # "dev": calls without a token act as the development admin; "api_key": tokens required.
    auth_mode: str = "dev"
    registry_addr: str = "127.0.0.1:50051"
    subscription_addr: str = "127.0.0.1:50052"
    gateway_addr: str = "127.0.0.1:50053"
    # The broker accounts, in shard order (services/common/accounts.py); credentials hidden from repr.
    accounts: tuple[Account, ...] = SIMULATED
    # "generated", "file" or "dhan"; empty picks "dhan" with credentials, else "generated".
    master_source: str = ""
    master_file: Path | None = None
    master_seed: int = 7
    master_scale: str = "full"
    feed_url: str = "ws://127.0.0.1:8765"
    # Connections (shards) over every account: accounts x feed_connections_per_account.
    feed_connections: int = 5
    feed_connections_per_account: int = 5
    feed_instruments_per_connection: int = 5000
    shard_id: int = 0
    shutdown_grace_seconds: float = 10.0
    db_pool_max_size: int = 10
    # An API key this service presents to the others (api_key mode).
    service_token: str | None = field(default=None, repr=False)
    # Subscription policy.
    stock_strikes_each_side: int = 12
    index_strikes_each_side: int = 50
    max_strikes_each_side: int = 100
    user_max_items: int = 50
    user_max_instruments: int = 5000
    # Strike steps past the midpoint between strikes (see services/subscription/recenter_policy.py).
    recenter_hysteresis_strikes: float = 0.6
    move_settle_seconds: float = 2.0
    # Feed shard behaviour.
    feed_watchdog_seconds: float = 30.0
    feed_first_tick_seconds: float = 30.0
    feed_market_hours_only: bool = True
    feed_coalesce_seconds: float = 0.05
    feed_max_backoff_seconds: float = 60.0
    feed_kicked_backoff_seconds: float = 300.0
    # The gateway's shards, "host:port" each, in shard-id order.
    gateway_shard_addrs: tuple[str, ...] = ()
    # The gateway's batching clock: ticks wait up to this long to share a message.
    gateway_batch_seconds: float = 0.010
    # `make run` adds this to every fixed port, so a second stack (or a test) can run beside.
    stack_port_offset: int = 0
    # Tier B plan: the plan file the scheduler preloads; the shipped one by default.
    tier_b_plan_file: Path = REPO_ROOT / "services" / "scheduler" / "tier_b_plan.toml"
    # Calendar and clock: "simulated" keeps an NSE session open whatever the
    # hour (`make run`); "exchange" follows the wall clock and the exchange calendar (k8s).
    market_clock: str = "simulated"
    # Scheduler: job times (IST, on trading days), the leader lock, catch-up and retries.
    scheduler_replica_id: str = ""  # empty: host name and process id
    scheduler_reload_master_at: time = time(8, 30)
    scheduler_preload_tier_b_at: time = time(9, 0)
    scheduler_end_of_day_at: time = time(15, 30)
    # MCX closes: while the US is on daylight saving time, and while it is on standard time.
    scheduler_mcx_close_at: time = MCX_CLOSE
    scheduler_mcx_close_us_winter_at: time = MCX_CLOSE_US_WINTER
    scheduler_recenter_seconds: float = 5.0
    # Sent in RecenterAllChains; None leaves the subscription service's default.
    scheduler_recenter_hysteresis_strikes: float | None = None
    # A dated job found overdue by at most this much when a leader starts runs once then.
    scheduler_misfire_grace_seconds: float = 6 * 3600.0
    scheduler_retry_seconds: float = 30.0
    scheduler_poll_seconds: float = 1.0
    scheduler_leader_poll_seconds: float = 2.0
    scheduler_call_timeout_seconds: float = 120.0
    scheduler_disabled_jobs: tuple[str, ...] = ()
    # Re-centring sweep: a chain re-centred less than the cooldown ago waits (monotonic time);
    # a live price older than the age bound is stale and moves nothing.
    recenter_cooldown_seconds: float = 5.0
    recenter_max_price_age_seconds: float = 60.0
    # Logs: a unary RPC that succeeds in this long or more is logged at INFO, faster ones at DEBUG.
    access_log_slow_seconds: float = 0.25
    # Shard health and failover (issue 13 §3): how often shards report their broker connection
    # (a shard silent for three times this counts as down), and how long a shard may be down
    # before its instruments move to live shards.
    shard_health_report_seconds: float = 5.0
    feed_failover_seconds: float = 20.0
    # Once every shard is up, a spread of shard loads above this is evened out by itself
    # (moves make-before-break); 0 leaves it to the admin Rebalance.
    feed_rebalance_spread: int = 500
    # Degrading on a lost dependency: a database call waits at most the acquire timeout for a
    # connection (then UNAVAILABLE), a connection attempt at most the connect timeout (whole
    # seconds, libpq's unit); a gateway told to stop ends its streams within the drain time,
    # then drains unary calls for the shutdown grace: both within terminationGracePeriodSeconds.
    db_acquire_timeout_seconds: float = 3.0
    db_connect_timeout_seconds: int = 3
    gateway_drain_seconds: float = 5.0
    # Token rotation (issue 14 §2): how often a shard re-reads its account's mounted token file
    # (a Kubernetes Secret updates it in place) to rotate the account when it changes.
    feed_token_file_poll_seconds: float = 5.0
    # Security (issue 15 §2): optional TLS from certificate files (a Secret in Kubernetes): a
    # server serves TLS when given its certificate and key; a client trusts the CA file's
    # certificates (and plaintext without one). Per-user rate limits on the RPCs that change
    # subscriptions: a token bucket refilling `rate_limit_per_second`, holding `rate_limit_burst`.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    rate_limit_per_second: float = 5.0
    rate_limit_burst: int = 30
    # Option chain (issue 16 §1): the discount rate (annual, continuously compounded) that
    # discounts put-call parity and carries the spot when no strike is priced on both sides.
    option_chain_rate: float = 0.065

    @property
    def dhan_credentials(self) -> bool:
        """Whether the feed is Dhan's (real accounts) rather than the local simulator."""
        return any(not account.simulated for account in self.accounts)

    def shard_place(self, shard_id: int | None = None) -> ShardPlace:
        """The account and connection index of a shard (this process's by default)."""
        return shard_place(
            self.accounts, self.feed_connections_per_account, self.shard_id if shard_id is None else shard_id
        )

    @property
    def effective_master_source(self) -> str:
        if self.master_source:
            return self.master_source
        return "dhan" if self.dhan_credentials else "generated"


_AUTH_MODES = ("dev", "api_key")
_MASTER_SOURCES = ("", "generated", "file", "dhan")
_MARKET_CLOCKS = ("simulated", "exchange")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _number(env: Mapping[str, str], name: str, default: N, low: N, high: N, kind: type[N]) -> N:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}; expected {low}..{high}"
        ) from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; expected {low}..{high}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, int)


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, float)


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not accepted; expected one of {[a for a in allowed if a]}")
    return value


def _time_of_day(env: Mapping[str, str], name: str, default: time) -> time:
    raw = env.get(name)
    if not raw:
        return default
    try:
        hours, minutes = raw.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a time of day; expected HH:MM in IST, e.g. 15:30") from None


def load_settings(env: Mapping[str, str] | None = None, *, grpc_port: int = 0) -> Settings:
    """Builds Settings from `env` (default: os.environ); `grpc_port` is the service's default."""
    env = os.environ if env is None else env
    master_file = env.get("MASTER_FILE") or None
    try:
        accounts = load_accounts(env)
    except AccountsError as error:
        raise ConfigError(str(error)) from None
    # FEED_CONNECTIONS counts one account's connections (Dhan allows 5).
    per_account = _int(env, "FEED_CONNECTIONS", 5, 1, 5)
    settings = Settings(
        database_url=env.get("DATABASE_URL") or None,
        data_dir=Path(env.get("DATASERVER_DATA_DIR") or REPO_ROOT / "var"),
        log_level=_choice(env, "LOG_LEVEL", "INFO", _LOG_LEVELS),
        grpc_host=env.get("GRPC_HOST", "127.0.0.1" if "KUBERNETES_SERVICE_HOST" not in env else "0.0.0.0"),
        grpc_port=_int(env, "GRPC_PORT", grpc_port, 0, 65535),
        metrics_port=_int(env, "METRICS_PORT", 0, 0, 65535),
        auth_mode=_choice(env, "AUTH_MODE", "dev", _AUTH_MODES),
        registry_addr=env.get("REGISTRY_ADDR", "127.0.0.1:50051"),
        subscription_addr=env.get("SUBSCRIPTION_ADDR", "127.0.0.1:50052"),
        gateway_addr=env.get("GATEWAY_ADDR", "127.0.0.1:50053"),
        accounts=accounts,
        master_source=_choice(env, "MASTER_SOURCE", "", _MASTER_SOURCES),
        master_file=Path(master_file) if master_file else None,
        master_seed=_int(env, "MASTER_SEED", 7, 0, 2**31 - 1),
        master_scale=_choice(env, "MASTER_SCALE", "full", ("full", "small")),
        # The real feed with real credentials, the local simulator otherwise.
        feed_url=env.get("FEED_URL")
        or ("ws://127.0.0.1:8765" if all(a.simulated for a in accounts) else "wss://api-feed.dhan.co"),
        feed_connections=len(accounts) * per_account,
        feed_connections_per_account=per_account,
        feed_instruments_per_connection=_int(env, "FEED_INSTRUMENTS_PER_CONNECTION", 5000, 1, 5000),
        shard_id=_int(env, "SHARD_ID", 0, 0, len(accounts) * per_account - 1),
        db_pool_max_size=_int(env, "DB_POOL_MAX_SIZE", 10, 1, 200),
        service_token=env.get("SERVICE_TOKEN") or None,
        stock_strikes_each_side=_int(env, "STOCK_STRIKES_EACH_SIDE", 12, 1, 200),
        index_strikes_each_side=_int(env, "INDEX_STRIKES_EACH_SIDE", 50, 1, 200),
        max_strikes_each_side=_int(env, "MAX_STRIKES_EACH_SIDE", 100, 1, 200),
        user_max_items=_int(env, "USER_MAX_ITEMS", 50, 1, 100_000),
        user_max_instruments=_int(env, "USER_MAX_INSTRUMENTS", 5000, 1, 25_000),
        recenter_hysteresis_strikes=_float(env, "RECENTER_HYSTERESIS_STRIKES", 0.6, 0.0, 50.0),
        move_settle_seconds=_float(env, "MOVE_SETTLE_SECONDS", 2.0, 0.0, 600.0),
        **_feed_settings(env),
        stack_port_offset=_int(env, "STACK_PORT_OFFSET", 0, 0, 10000),
        # Tier B plan
        tier_b_plan_file=Path(env.get("TIER_B_PLAN_FILE") or Settings.tier_b_plan_file),
        # Calendar and clock.
        market_clock=_choice(env, "MARKET_CLOCK", "simulated", _MARKET_CLOCKS),
        **_scheduler_settings(env),
        # Re-centring sweep
        recenter_cooldown_seconds=_float(env, "RECENTER_COOLDOWN_SECONDS", 5.0, 0.0, 3600.0),
        recenter_max_price_age_seconds=_float(env, "RECENTER_MAX_PRICE_AGE_SECONDS", 60.0, 0.1, 86400.0),
        # Logs
        access_log_slow_seconds=_float(env, "ACCESS_LOG_SLOW_SECONDS", 0.25, 0.0, 3600.0),
        # Shard health and failover
        shard_health_report_seconds=_float(env, "SHARD_HEALTH_REPORT_SECONDS", 5.0, 0.05, 60.0),
        feed_failover_seconds=_float(env, "FEED_FAILOVER_SECONDS", 20.0, 0.0, 3600.0),
        feed_rebalance_spread=_int(env, "FEED_REBALANCE_SPREAD", 500, 0, 5000),
        **_degrade_settings(env),
        # Token rotation
        feed_token_file_poll_seconds=_float(env, "FEED_TOKEN_FILE_POLL_SECONDS", 5.0, 0.05, 3600.0),
        **_security_settings(env),
        # Option chain
        option_chain_rate=_float(env, "OPTION_CHAIN_RATE", 0.065, -0.1, 1.0),
    )
    if "TIER_B_PLAN_FILE" in env and not settings.tier_b_plan_file.is_file():
        raise ConfigError(f"TIER_B_PLAN_FILE={settings.tier_b_plan_file} is not a file (the Tier B plan, TOML)")
    for name, width in (("STOCK", settings.stock_strikes_each_side), ("INDEX", settings.index_strikes_each_side)):
        if width > settings.max_strikes_each_side:
            raise ConfigError(
                f"{name}_STRIKES_EACH_SIDE={width} exceeds MAX_STRIKES_EACH_SIDE={settings.max_strikes_each_side}"
            )
    if settings.effective_master_source == "file" and settings.master_file is None:
        raise ConfigError("MASTER_SOURCE=file needs MASTER_FILE, the path of a Dhan scrip-master CSV")
    if settings.effective_master_source == "dhan" and not settings.dhan_credentials:
        raise ConfigError(
            "MASTER_SOURCE=dhan needs a Dhan account (DHAN_CLIENT_ID and DHAN_ACCESS_TOKEN, or DHAN_ACCOUNTS)"
        )
    return settings


def _security_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """TLS files (checked to exist: a typo must not silently serve plaintext) and rate limits."""
    files: dict[str, Path | None] = {}
    for name in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"):
        raw = env.get(name) or None
        if raw is not None and not Path(raw).is_file():
            raise ConfigError(f"{name}={raw} is not a file (a PEM file)")
        files[name.lower()] = Path(raw) if raw else None
    if (files["tls_cert_file"] is None) != (files["tls_key_file"] is None):
        raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both to serve TLS, or neither")
    return {
        **files,
        "rate_limit_per_second": _float(env, "RATE_LIMIT_PER_SECOND", 5.0, 0.01, 10_000.0),
        "rate_limit_burst": _int(env, "RATE_LIMIT_BURST", 30, 1, 100_000),
    }


def _feed_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The broker connections' and the gateway's settings."""
    return {
        "feed_watchdog_seconds": _float(env, "FEED_WATCHDOG_SECONDS", 30.0, 0.1, 3600.0),
        "feed_first_tick_seconds": _float(env, "FEED_FIRST_TICK_SECONDS", 30.0, 0.1, 3600.0),
        "feed_market_hours_only": _choice(env, "FEED_MARKET_HOURS_ONLY", "true", ("true", "false")) == "true",
        "feed_coalesce_seconds": _float(env, "FEED_COALESCE_SECONDS", 0.05, 0.0, 5.0),
        "feed_max_backoff_seconds": _float(env, "FEED_MAX_BACKOFF_SECONDS", 60.0, 0.01, 3600.0),
        "feed_kicked_backoff_seconds": _float(env, "FEED_KICKED_BACKOFF_SECONDS", 300.0, 0.01, 7200.0),
        "gateway_shard_addrs": tuple(a.strip() for a in env.get("GATEWAY_SHARD_ADDRS", "").split(",") if a.strip()),
        "gateway_batch_seconds": _float(env, "GATEWAY_BATCH_SECONDS", 0.010, 0.001, 1.0),
    }


def _scheduler_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The trading day's job times (IST, on trading days), the leader lock, catch-up and retries."""
    return {
        "scheduler_replica_id": env.get("SCHEDULER_REPLICA_ID", ""),
        "scheduler_reload_master_at": _time_of_day(env, "SCHEDULER_RELOAD_MASTER_AT", time(8, 30)),
        "scheduler_preload_tier_b_at": _time_of_day(env, "SCHEDULER_PRELOAD_TIER_B_AT", time(9, 0)),
        "scheduler_end_of_day_at": _time_of_day(env, "SCHEDULER_END_OF_DAY_AT", time(15, 30)),
        "scheduler_mcx_close_at": _time_of_day(env, "SCHEDULER_MCX_CLOSE_AT", MCX_CLOSE),
        "scheduler_mcx_close_us_winter_at": _time_of_day(env, "SCHEDULER_MCX_CLOSE_US_WINTER_AT", MCX_CLOSE_US_WINTER),
        "scheduler_recenter_seconds": _float(env, "SCHEDULER_RECENTER_SECONDS", 5.0, 0.5, 3600.0),
        "scheduler_recenter_hysteresis_strikes": (
            _float(env, "SCHEDULER_RECENTER_HYSTERESIS_STRIKES", 0.0, 0.0, 50.0)
            if env.get("SCHEDULER_RECENTER_HYSTERESIS_STRIKES")
            else None
        ),
        "scheduler_misfire_grace_seconds": _float(env, "SCHEDULER_MISFIRE_GRACE_SECONDS", 6 * 3600.0, 0.0, 86400.0),
        "scheduler_retry_seconds": _float(env, "SCHEDULER_RETRY_SECONDS", 30.0, 0.1, 3600.0),
        "scheduler_poll_seconds": _float(env, "SCHEDULER_POLL_SECONDS", 1.0, 0.01, 60.0),
        # A follower tries the lock this often, so a dead leader is replaced well within 15 s.
        "scheduler_leader_poll_seconds": _float(env, "SCHEDULER_LEADER_POLL_SECONDS", 2.0, 0.05, 10.0),
        "scheduler_call_timeout_seconds": _float(env, "SCHEDULER_CALL_TIMEOUT_SECONDS", 120.0, 1.0, 3600.0),
        "scheduler_disabled_jobs": tuple(
            n.strip() for n in env.get("SCHEDULER_DISABLED_JOBS", "").split(",") if n.strip()
        ),
    }


def _degrade_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """Degrading on a lost dependency: database timeouts and the gateway's drain."""
    return {
        "db_acquire_timeout_seconds": _float(env, "DB_ACQUIRE_TIMEOUT_SECONDS", 3.0, 0.1, 60.0),
        # libpq treats 1 as 2 and 0 as forever: at least 2.
        "db_connect_timeout_seconds": _int(env, "DB_CONNECT_TIMEOUT_SECONDS", 3, 2, 60),
        "gateway_drain_seconds": _float(env, "GATEWAY_DRAIN_SECONDS", 5.0, 0.0, 300.0),
    }
