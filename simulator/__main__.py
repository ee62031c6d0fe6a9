"""python -m simulator [--port 8765] [--control-port 8766] [--master PATH] ...

Settings come from SIM_* environment variables (see settings.py); flags override them."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import uvloop

from services.common.accounts import MAX_ACCOUNTS, simulated_account
from services.common.config import ConfigError
from services.common.jsonlog import configure_logging

from .settings import SimulatorSettings
from .simulator import Simulator


def parse_args(argv: Sequence[str] | None = None) -> SimulatorSettings:
    parser = argparse.ArgumentParser(prog="python -m simulator", description="Dhan v2 live-feed simulator")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--control-host")
    parser.add_argument("--control-port", type=int)
    parser.add_argument("--master", type=Path, dest="master_path", help="scrip master CSV (+ .prices.csv sidecar)")
    parser.add_argument("--master-cache-dir", type=Path, help="where to generate the master when --master is not given")
    parser.add_argument("--master-scale", choices=("small", "full"))
    parser.add_argument("--master-seed", type=int)
    parser.add_argument("--trading-date", type=date.fromisoformat, help="the generated master's date (default: today)")
    parser.add_argument("--tokens", help="comma-separated valid tokens (default: any non-empty token)")
    parser.add_argument("--client-ids", help="comma-separated valid client ids (default: any non-empty id)")
    parser.add_argument(
        "--accounts", type=int, help="valid client ids: those of the first N simulated accounts (as FEED_ACCOUNTS=N)"
    )
    parser.add_argument("--ticks-per-second", type=float, help="per instrument per connection")
    parser.add_argument("--connection-rate-cap", type=float, help="packets/s per connection")
    parser.add_argument("--total-rate-cap", type=float, help="packets/s for the whole simulator")
    parser.add_argument("--burst", action="store_true", default=None, help="tick as fast as the caps allow")
    parser.add_argument("--ping-interval", type=float)
    parser.add_argument(
        "--stamp-send-time",
        action="store_true",
        default=None,
        help="bench only: Full packets carry the UTC ms of the day at send in their volume field",
    )
    parser.add_argument(
        "--permessage-deflate",
        action="store_true",
        default=None,
        help="bench only: accept permessage-deflate when a client offers it",
    )
    parser.add_argument("--seed", type=int, help="random-walk seed")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = vars(parser.parse_args(argv))
    accounts = args.pop("accounts")
    for name, field in (("tokens", "valid_tokens"), ("client_ids", "valid_client_ids")):
        raw = args.pop(name)
        args[field] = frozenset(v.strip() for v in raw.split(",") if v.strip()) if raw else None
    if accounts is not None:
        if args["valid_client_ids"] is not None or not 1 <= accounts <= MAX_ACCOUNTS:
            parser.error(f"--accounts takes 1..{MAX_ACCOUNTS}, and not with --client-ids")
        args["valid_client_ids"] = frozenset(simulated_account(n).client_id for n in range(1, accounts + 1))
    try:
        return SimulatorSettings.from_env().with_overrides(**args)
    except ConfigError as error:
        parser.error(str(error))
        raise


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    configure_logging("feed-simulator", settings.log_level)
    # Our own connection logs carry ids and client ids; websockets repeats them at INFO.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    uvloop.run(Simulator(settings).serve())


if __name__ == "__main__":
    main()
