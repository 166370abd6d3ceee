"""The layers of vimeo_api (.importlinter, README "Layout") are checked, not remembered:
``lint-imports`` passes on the code, fails on an upward import, and no module imports
itself through others (no import circle)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
    )


def test_the_layers_contract_is_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "vimeo_api", tmp_path / "vimeo_api", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    # The domain reaching up into an adapter: what the events exist to avoid.
    with open(tmp_path / "vimeo_api" / "files.py", "a") as fh:
        fh.write("\nfrom . import metacache  # noqa: E402,F401\n")
    result = lint(tmp_path)
    assert result.returncode == 1
    assert "vimeo_api.files is not allowed to import vimeo_api.metacache" in result.stdout


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("vimeo_api")
    circles = []
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.startswith("vimeo_api") and graph.chain_exists(importer=imported, imported=importer):
                circles.append((importer, imported))
    assert circles == []


def test_every_module_has_its_layer():
    """A module left out of the contract would escape it."""
    text = (ROOT / ".importlinter").read_text()
    listed = set()
    for line in text.split("layers =", 1)[1].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            listed |= {name.strip() for name in line.replace(":", "|").split("|")}
    modules = {path.stem for path in (ROOT / "vimeo_api").glob("*.py") if path.stem != "__init__"}
    assert modules - listed == set()
    assert listed - modules == set()
