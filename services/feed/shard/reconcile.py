"""What to send the broker: the difference between the assignment and what the connection
has, as subscribe/unsubscribe messages of at most 100 instruments."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from services.dhan.protocol import FeedMode
from services.dhan.requests import build_subscribe_messages, build_unsubscribe_messages

Instrument = tuple[str, int]  # (Dhan segment name, security id)


def plan_messages(desired: Mapping[Instrument, FeedMode], actual: Mapping[Instrument, FeedMode]) -> list[str]:
    """Unsubscribes first (they free room on a connection capped at 5,000), then subscribes;
    a mode change is an unsubscribe in the old mode and a subscribe in the new one."""
    leaving: dict[FeedMode, list[Instrument]] = defaultdict(list)
    joining: dict[FeedMode, list[Instrument]] = defaultdict(list)
    for instrument, mode in actual.items():
        wanted = desired.get(instrument)
        if wanted != mode:
            leaving[mode].append(instrument)
    for instrument, mode in desired.items():
        if actual.get(instrument) != mode:
            joining[mode].append(instrument)
    messages: list[str] = []
    for mode, instruments in sorted(leaving.items()):
        messages += build_unsubscribe_messages(sorted(instruments), mode)
    for mode, instruments in sorted(joining.items()):
        messages += build_subscribe_messages(sorted(instruments), mode)
    return messages
