"""The simulator's "move an underlying" control route: the index's book, its futures and
options follow the new level; bad input is refused."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.catalog import Catalog
from tests.test_simulator import NIFTY, catalog, http, start_sim

__all__ = ["catalog", "start_sim"]  # fixtures, used by name


async def test_an_underlying_moves_and_its_book_follows(start_sim: Any, catalog: Catalog) -> None:
    async with start_sim() as sim:
        assert sim.market is not None
        book = sim.market.book(*NIFTY)
        before = book._fair(sim.market.now())
        status, body = await http(sim.control_port, "POST", "/underlyings/index/NIFTY/move", {"percent": 2})
        assert status == 200 and (body["asset"], body["symbol"]) == ("index", "NIFTY")
        assert body["price"] == pytest.approx(before * 1.02, rel=1e-3)
        assert book._fair(sim.market.now()) == pytest.approx(before * 1.02, rel=1e-3)
        option = next(c for c in catalog.contracts() if c.kind == "option" and c.underlying == "NIFTY" and c.is_call)
        assert option.strike is not None
        call = sim.market.book(*option.key)
        higher = call._fair(sim.market.now())
        await http(sim.control_port, "POST", "/underlyings/index/NIFTY/move", {"percent": -5})
        assert call._fair(sim.market.now()) < higher  # a call falls with its underlying

        assert (await http(sim.control_port, "POST", "/underlyings/index/NOSUCH/move", {"percent": 1}))[0] == 404
        assert (await http(sim.control_port, "POST", "/underlyings/bond/NIFTY/move", {"percent": 1}))[0] == 404
        for bad in ({"percent": "2"}, {"percent": 51}, {}, {"percent": True}):
            assert (await http(sim.control_port, "POST", "/underlyings/index/NIFTY/move", bad))[0] == 400
        assert (await http(sim.control_port, "GET", "/underlyings/index/NIFTY/move"))[0] == 405
