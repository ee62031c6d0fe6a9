"""The default Tier B plan: the big index chains around the money over their next expiries,
the index values, and MCX commodity chains. The scheduler preloads it each trading day;
`make run` preloads it at start-up."""

from __future__ import annotations

from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.keys import key_proto

# (underlying, nearest expiries, strikes each side of the ATM)
CHAINS: tuple[tuple[str, int, int], ...] = (
    ("NIFTY", 2, 50),
    ("BANKNIFTY", 1, 40),
    ("FINNIFTY", 1, 25),
    ("MIDCPNIFTY", 1, 25),
    ("SENSEX", 2, 40),
    ("BANKEX", 1, 25),
    ("CRUDEOIL", 1, 20),
    ("NATURALGAS", 1, 20),
)
# Index values on IDX_I: NIFTY, BANKNIFTY, FINNIFTY, MIDCPNIFTY, INDIA VIX, NIFTYNXT50, SENSEX, BANKEX.
INDEX_IDS: tuple[int, ...] = (13, 25, 27, 442, 21, 38, 51, 69)


def default_plan(listed: set[str] | None = None) -> pb.SetTierBPlanRequest:
    """The plan; with `listed`, only the chains whose underlying the master lists options for
    (a small test master lacks some)."""
    return pb.SetTierBPlanRequest(
        chains=[
            pb.TierBChain(
                underlying_symbol=symbol, nearest_expiries=expiries, strikes_each_side=width, include_underlying=True
            )
            for symbol, expiries, width in CHAINS
            if listed is None or symbol in listed
        ],
        instruments=[pb.TierBInstrument(key=key_proto(("IDX_I", i))) for i in INDEX_IDS],
    )
