"""What the production install holds: the services and their runtime dependencies, never the
terminal app or a terminal UI library (those are the `terminal` extra)."""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
UI_LIBRARIES = {"textual", "rich"}
# What the images copy and install (Dockerfile): the terminal is neither.
IMAGE_PACKAGES = ("services", "simulator")


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _runtime_closure(requirements: list[str]) -> set[str]:
    """The runtime requirements and theirs, as installed here (no extras, markers of this machine)."""
    seen: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        pending.extend(Requirement(r) for r in metadata.requires(name) or [])
    return seen


def test_no_runtime_dependency_is_a_ui_library() -> None:
    direct = {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}
    assert not direct & UI_LIBRARIES
    # Nor does one of them bring one in.
    assert not _runtime_closure(_project()["dependencies"]) & UI_LIBRARIES


def test_the_terminal_extra_has_its_ui_library_and_development_installs_it() -> None:
    extra = {canonicalize_name(Requirement(r).name) for r in _project()["optional-dependencies"]["terminal"]}
    assert "textual" in extra
    install = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line)
    assert "terminal" in install.rpartition("-e")[2], install


def _imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.partition(".")[0])
    return modules


def test_the_services_never_import_the_terminal_or_a_ui_library() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for package in IMAGE_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (found := _imported_modules(path) & {"terminal", *UI_LIBRARIES})
    }
    assert not offenders


def test_the_image_drops_the_console_scripts_of_packages_it_does_not_hold() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, target in _project()["scripts"].items():
        if target.partition(".")[0] not in IMAGE_PACKAGES:
            assert f"rm /opt/venv/bin/{name}" in dockerfile, name


def test_the_terminal_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """The console script's target, run where the UI libraries are not installed: this
    environment's packages less those, without site (so nothing else puts them back)."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    without_ui = tmp_path / "site-packages"
    without_ui.mkdir()
    for entry in site_packages.iterdir():
        if entry.name.partition("-")[0].partition(".")[0] not in UI_LIBRARIES:
            (without_ui / entry.name).symlink_to(entry)
    module, _, function = _project()["scripts"]["dataserver-terminal"].partition(":")
    result = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; from {module} import {function}; sys.exit({function}())"],
        env={"PYTHONPATH": f"{ROOT}:{ROOT / 'services' / 'gen'}:{without_ui}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"the terminal needs its extra: pip install '{_project()['name']}[terminal]'\n"


def test_each_feed_role_loads_only_its_own_server() -> None:
    """`python -m services.feed shard` must not load the gateway's option-chain math (vollib,
    numpy, scipy): five shards per account would each carry it (measured: twice the RSS)."""
    heavy = ("numpy", "scipy", "vollib")
    probe = (
        "import sys; from services.feed.__main__ import server; server(sys.argv[1]); "
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r})))"
    )
    loaded = {
        role: subprocess.run(
            [sys.executable, "-c", probe, role], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
        for role in ("shard", "gateway")
    }
    assert loaded["shard"] == []
    assert set(loaded["gateway"]) >= {"vollib"}  # the probe sees what it looks for
