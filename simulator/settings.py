"""Settings of the Dhan feed simulator, read once from the environment (``SIM_*``) and
overridable from the command line; nothing else in the package reads ``os.environ``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import date
from pathlib import Path
from typing import Any

from services.common.config import ConfigError

INVALID_REQUEST_ACTIONS = ("disconnect", "ignore")
MASTER_SCALES = ("small", "full")


@dataclass(frozen=True)
class SimulatorSettings:
    host: str = "127.0.0.1"
    port: int = 8765  # WebSocket feed; 0 picks a free port (tests)
    control_host: str = "127.0.0.1"
    control_port: int = 8766  # HTTP control API; 0 picks a free port
    # Credentials. None accepts any non-empty value; a set accepts only its members.
    valid_tokens: frozenset[str] | None = None
    valid_client_ids: frozenset[str] | None = None
    expired_tokens: frozenset[str] = frozenset()  # answered with 807 instead of 809
    # Dhan's limits (protocol reference): 5 sockets per client id, 5,000 instruments per
    # socket; the 100-per-message limit is the codec's and not configurable.
    max_connections_per_client: int = 5
    max_instruments_per_connection: int = 5000
    # What a malformed request (bad JSON, > 100 instruments, count mismatch, unknown code)
    # gets: "disconnect" = disconnect packet 814 then close; "ignore" = logged and dropped.
    invalid_request_action: str = "disconnect"
    # Dhan pings every 10 s and drops a socket silent for 40 s (10 s + 30 s pong wait).
    ping_interval: float = 10.0
    ping_timeout: float = 30.0
    close_timeout: float = 2.0
    # Rates, in packets (frames) per second. A Quote tick of a derivative is 2 packets.
    ticks_per_second: float = 1.0  # per instrument per connection
    connection_rate_cap: float = 50_000.0
    total_rate_cap: float = 100_000.0
    burst: bool = False  # every instrument ticks as fast as the caps (and the client) allow
    send_interval: float = 0.01  # pacing granularity of the send loops
    snapshot_on_subscribe: bool = True  # one tick right after the prev-close packet
    # Bench-only options, off by default (bench/feed.py turns them on):
    # - stamp_send_time: the volume field of every Full packet carries the UTC milliseconds
    #   of the day (0..86,399,999) at which the packet was encoded for sending instead of the
    #   book's volume, so a client can measure end-to-end latency from Tick.volume. It stays
    #   monotone during a day, but it is not a volume: never for anything but benches.
    # - permessage_deflate: accept the permessage-deflate extension when a client offers it
    #   (websockets' default client does); off, the server declines it and frames go
    #   uncompressed, which is what the feed's clients are tuned for.
    stamp_send_time: bool = False
    permessage_deflate: bool = False
    # Instrument metadata: a master CSV (+ ".prices.csv" sidecar if present); without one,
    # a master is generated (services.dhan.generator) into master_cache_dir or a
    # temporary directory. Use the registry's cache dir, seed and scale to share its ids.
    master_path: Path | None = None
    master_cache_dir: Path | None = None
    master_seed: int = 7
    master_scale: str = "small"
    # The generated master's trading date; None: today in India. `make run` passes its market
    # clock's trading date, so the simulator quotes the master the registry serves.
    trading_date: date | None = None
    seed: int | None = None  # random walks; None: a fresh seed per run
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name in ("port", "control_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name}={getattr(self, name)} is not a TCP port (0..65535)")
        if self.max_connections_per_client < 1 or self.max_instruments_per_connection < 1:
            raise ConfigError("connection and instrument limits must be at least 1")
        if self.invalid_request_action not in INVALID_REQUEST_ACTIONS:
            raise ConfigError(f"invalid_request_action must be one of {INVALID_REQUEST_ACTIONS}")
        if self.master_scale not in MASTER_SCALES:
            raise ConfigError(f"master_scale must be one of {MASTER_SCALES}")
        for name in (
            "ticks_per_second",
            "connection_rate_cap",
            "total_rate_cap",
            "send_interval",
            "ping_interval",
            "ping_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SimulatorSettings:
        """Reads ``SIM_<FIELD>`` for every field (e.g. SIM_PORT, SIM_VALID_TOKENS=a,b,
        SIM_BURST=1, SIM_MASTER_PATH); unset or empty variables keep the default."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"SIM_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> SimulatorSettings:
        """A copy with the given fields replaced; None values are skipped (CLI defaults)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


_DEFAULTS = SimulatorSettings.__dataclass_fields__


def _convert(name: str, raw: str) -> Any:
    default = _DEFAULTS[name].default
    try:
        if name in ("valid_tokens", "valid_client_ids", "expired_tokens"):
            return frozenset(v.strip() for v in raw.split(",") if v.strip())
        if name in ("master_path", "master_cache_dir"):
            return Path(raw)
        if name == "seed":
            return int(raw)
        if name == "trading_date":
            return date.fromisoformat(raw)
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"SIM_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
