"""python -m services.feed gateway|shard"""

import sys

import uvloop

from services.common.gctuning import tune_for_hot_path
from services.common.server import serve_service
from services.feed import gateway_server, shard_server

ROLES = {"gateway": (gateway_server, True), "shard": (shard_server, False)}


def main(role: str) -> None:
    if role not in ROLES:
        sys.exit(f"usage: python -m services.feed {{{'|'.join(ROLES)}}}")
    module, needs_database = ROLES[role]
    tune_for_hot_path()
    uvloop.run(serve_service(f"feed-{role}", module.DEFAULT_PORT, module.create, needs_database=needs_database))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
