"""`dataserver-terminal` (and `make terminal`): the watchlist and option chain of the local stack."""

from __future__ import annotations

import argparse
import os

from terminal.app import TerminalApp
from terminal.client import Connection
from terminal.model import TerminalModel


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
    app, _ = build(parse(argv))
    app.run()


if __name__ == "__main__":
    main()
