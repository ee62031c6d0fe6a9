"""`dataserver-terminal` (and `make terminal`): the watchlist and option chain of the local stack."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from terminal.client import Connection
from terminal.model import TerminalModel

if TYPE_CHECKING:
    from terminal.app import TerminalApp

# The UI libraries are the `terminal` extra, not dependencies of the services' install.
MISSING_EXTRA = "the terminal needs its extra: pip install 'dataserver[terminal]'"
_EXTRA_MODULES = frozenset({"textual", "rich"})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dataserver-terminal", description=__doc__)
    parser.add_argument("--gateway", default=os.environ.get("GATEWAY_ADDR", "127.0.0.1:50053"))
    parser.add_argument("--subscription", default=os.environ.get("SUBSCRIPTION_ADDR", "127.0.0.1:50052"))
    parser.add_argument("--registry", default=os.environ.get("REGISTRY_ADDR", "127.0.0.1:50051"))
    parser.add_argument(
        "--token",
        default=os.environ.get("DATASERVER_TOKEN", ""),
        help="an API key (make run prints the dev user's); none with AUTH_MODE=dev",
    )
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[TerminalApp, Connection]:
    from terminal.app import TerminalApp  # imports textual, so only once the app is wanted

    connection = Connection(args.gateway, args.subscription, args.registry, args.token)
    model = TerminalModel()
    app = TerminalApp(
        model,
        follow=connection.follow,
        add=connection.add,
        remove=connection.remove,
        chain=connection.chain_source(model),
    )
    return app, connection


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        app, _ = build(args)
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in _EXTRA_MODULES:
            raise
        print(MISSING_EXTRA, file=sys.stderr)
        raise SystemExit(2) from None
    app.run()


if __name__ == "__main__":
    main()
