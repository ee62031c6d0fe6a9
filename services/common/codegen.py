"""Python code generation from protos/, and the check that the committed output is fresh.

python -m services.common.codegen write    (`make gen`)
python -m services.common.codegen check    (`make check-gen`, and a test)
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

from services.common.config import REPO_ROOT

GENERATED = REPO_ROOT / "services" / "gen"


def generate(into: Path) -> None:
    protos = sorted(str(p.relative_to(REPO_ROOT / "protos")) for p in (REPO_ROOT / "protos").rglob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={into}",
            f"--pyi_out={into}",
            f"--grpc_python_out={into}",
            *protos,
        ],
        cwd=REPO_ROOT / "protos",
        check=True,
    )
    for folder in [into / "dataserver", *(into / "dataserver").rglob("*")]:
        if folder.is_dir():
            (folder / "__init__.py").touch()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def stale_files() -> list[str]:
    """Paths under services/gen that are missing, extra or different."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        generate(fresh)
        expected, actual = _files(fresh), _files(GENERATED)
        differing = sorted(expected ^ actual)
        differing += sorted(p for p in expected & actual if not filecmp.cmp(fresh / p, GENERATED / p, shallow=False))
        return differing


def write() -> None:
    import shutil

    shutil.rmtree(GENERATED / "dataserver", ignore_errors=True)
    GENERATED.mkdir(parents=True, exist_ok=True)
    generate(GENERATED)


def main() -> None:
    if sys.argv[1:] == ["write"]:
        write()
        return
    stale = stale_files()
    if stale:
        print("generated code is stale; run `make gen` and commit:", *stale, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print("generated code matches protos/")


if __name__ == "__main__":
    main()
