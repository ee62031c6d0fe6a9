"""What reload_master re-sends: the plan in force less expiry dates the new master no longer
lists (a plan naming one would be refused whole)."""

from __future__ import annotations

from datetime import date

from dataserver.subscription.v1 import subscription_pb2 as pb

from services.common.keys import key_proto
from services.scheduler.jobs import unexpired


def test_explicit_expired_dates_are_dropped_and_nearest_chains_kept() -> None:
    dated = pb.TierBChain(
        underlying_symbol="NIFTY",
        expiry_dates=pb.ExpiryDateList(expiry_dates=["2026-11-23", "2026-11-25", "2026-12-01"]),
        strikes_each_side=3,
    )
    gone = pb.TierBChain(underlying_symbol="SENSEX", expiry_dates=pb.ExpiryDateList(expiry_dates=["2026-11-20"]))
    nearest = pb.TierBChain(underlying_symbol="BANKNIFTY", nearest_expiries=2)
    plan = pb.GetTierBPlanResponse(
        chains=[dated, gone, nearest], instruments=[pb.TierBInstrument(key=key_proto(("IDX_I", 13)))]
    )
    sent = unexpired(plan, date(2026, 11, 25))
    assert [c.underlying_symbol for c in sent.chains] == ["NIFTY", "BANKNIFTY"]
    assert list(sent.chains[0].expiry_dates.expiry_dates) == ["2026-11-25", "2026-12-01"]
    assert sent.chains[0].strikes_each_side == 3
    assert sent.chains[1] == nearest and list(sent.instruments) == list(plan.instruments)
    assert plan.chains[0].expiry_dates.expiry_dates[0] == "2026-11-23"  # the plan read is untouched
