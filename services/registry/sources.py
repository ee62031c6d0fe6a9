"""Where a master comes from: Dhan's URLs, a file, or the offline generator.

Each source yields a local CSV path (plus the generator's price sidecar when there is one);
downloads and generated files are kept under the data folder, keyed by date.
"""

from __future__ import annotations

import shutil
import urllib.request
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from services.common.errors import FailedPrecondition, InvalidArgument
from services.dhan.master import prices_sidecar

DHAN_COMPACT_URL = "https://images.dhan.co/api-data/api-scrip-master.csv"
DHAN_DETAILED_URL = "https://images.dhan.co/api-data/api-scrip-master-detailed.csv"


@dataclass(frozen=True)
class MasterFile:
    source: str  # "dhan", "file", "generated"
    detail: str
    csv_path: Path
    prices_path: Path | None


def from_file(path: Path) -> MasterFile:
    if not path.is_file():
        raise InvalidArgument(f"master file {str(path)!r} does not exist on the server; give the path of a Dhan CSV")
    sidecar = prices_sidecar(path)
    return MasterFile("file", str(path), path, sidecar if sidecar.is_file() else None)


def from_generator(cache_dir: Path, trading_date: date, seed: int, scale: str) -> MasterFile:
    from services.dhan.generator import cached_master

    path = cached_master(cache_dir, trading_date, seed, scale)
    detail = f"generator date={trading_date.isoformat()} seed={seed} scale={scale}"
    return MasterFile("generated", detail, path, prices_sidecar(path))


def from_dhan(cache_dir: Path, trading_date: date, url: str = DHAN_DETAILED_URL) -> MasterFile:
    path = cache_dir / f"dhan-{trading_date.isoformat()}.csv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        try:
            with urllib.request.urlopen(url, timeout=120) as response, partial.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise FailedPrecondition(f"could not download the Dhan scrip master from {url}: {error}") from error
        partial.replace(path)
    return MasterFile("dhan", url, path, None)
