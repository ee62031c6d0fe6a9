"""Prices as terminals see them: Dhan's float32 prices rounded to the decimals they are quoted
in, so a terminal gets 242.7 and not 242.6999969482422 (the float32 widened as it is).

The rule, decided by the packet's exchange segment byte (no per-instrument look-up on the
hot path): 2 decimals, the paisa, for every segment but the currency ones (NSE_CURRENCY,
BSE_CURRENCY), which are quoted to 4 (ticks of 0.0025). Every tick size in the scrip master
is a whole number of those units (1 to 500 paise for equities and F&O, 0.01 or 0.05 for
indices, whole rupees for most MCX contracts), so a price on its tick comes back as exactly
that decimal. Decimals, not the tick itself: a multiple of 0.05 computed in binary (n * 0.05)
is noise again (0.15000000000000002), while n / 100 is the double nearest the decimal, the
one whose repr is that decimal.

How: x * scale rounded to the integer n by adding and taking away 1.5 * 2**52 (the FPU
rounds the sum to the nearest integer, ties to even; exact for |x * scale| < 2**51), then
n / scale, a correctly rounded division. Plain float operations: no call, and no exception
on the NaN or infinity a corrupt packet could hold (they pass through).

float32's limit: its step is below half a paisa only under 2**17 (131,072; 1,024 for four
decimals). Above, the result is the paisa nearest what Dhan sent, which may be a paisa off a
price on a finer tick than float32 carries there; instruments priced that high mostly trade
on coarse ticks (whole rupees) that float32 carries exactly.
"""

from __future__ import annotations

from typing import Final

from services.common.instruments import SEGMENT_WIRE_CODES

ROUNDING: Final = 6755399441055744.0  # 1.5 * 2**52: x + ROUNDING - ROUNDING is x rounded to an integer
PAISE: Final = 100.0
CURRENCY_UNITS: Final = 10_000.0
_CURRENCY_CODES = frozenset(SEGMENT_WIRE_CODES[name] for name in ("NSE_CURRENCY", "BSE_CURRENCY"))

# Scale by segment byte (any byte: an unknown segment is quoted in paise).
SCALES: Final[tuple[float, ...]] = tuple(CURRENCY_UNITS if code in _CURRENCY_CODES else PAISE for code in range(256))


def rounded(price: float, scale: float, _r: float = ROUNDING) -> float:
    """`price` rounded to 1/scale: what every price sent to a terminal goes through (the fast
    path in encoding.full_entry writes the same expression inline)."""
    return (price * scale + _r - _r) / scale
