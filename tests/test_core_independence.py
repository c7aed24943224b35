"""flexmoe_core is a plain library: importing every module of it loads nothing of Flower's."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import flexmoe_core


def test_core_modules_import_no_flower_package():
    modules = [f"flexmoe_core.{m.name}" for m in pkgutil.iter_modules(flexmoe_core.__path__)]
    # Functions import some dependencies lazily, so also scan the source for import statements.
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'flwr_datasets')))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    for source in Path(flexmoe_core.__path__[0]).glob("*.py"):
        lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        offending = [line for line in lines if line.startswith(("import flwr", "from flwr"))]
        assert offending == [], f"{source.name} imports Flower: {offending}"
