"""python -m services.feed gateway|shard"""

import sys

from services.common.gctuning import tune_for_hot_path
from services.feed import gateway_server, shard_server

ROLES = {"gateway": gateway_server.serve, "shard": shard_server.serve}


def main(role: str) -> None:
    if role not in ROLES:
        sys.exit(f"usage: python -m services.feed {{{'|'.join(ROLES)}}}")
    tune_for_hot_path()
    ROLES[role]()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
