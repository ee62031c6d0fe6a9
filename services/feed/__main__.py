"""python -m services.feed gateway|shard"""

import importlib
import sys
from collections.abc import Callable

from services.common.gctuning import tune_for_hot_path

# Each role imports only its own server: a shard has no use for the gateway's option-chain math
# (vollib, numpy, scipy), which would double its memory.
ROLES = {"gateway": "services.feed.gateway_server", "shard": "services.feed.shard_server"}


def server(role: str) -> Callable[[], None]:
    """The role's `serve`, its module imported now."""
    serve: Callable[[], None] = importlib.import_module(ROLES[role]).serve
    return serve


def main(role: str) -> None:
    if role not in ROLES:
        sys.exit(f"usage: python -m services.feed {{{'|'.join(ROLES)}}}")
    serve = server(role)
    tune_for_hot_path()
    serve()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
