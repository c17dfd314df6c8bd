"""The layers of the package, held by reading every module's imports.

- ``amnst.engine`` (the transfer: arrays in, arrays out) imports only the
  engine and ``amnst.config``: no Ray, storage, metrics or batch.
- Nothing in the product imports the harness, ``amnst.bench``: the CLI finds
  its commands by name (``cli._add_harness_commands``).
- ``amnst.batch`` never imports ``amnst.cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "amnst"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The ``amnst`` modules (or packages) ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "amnst" or name.startswith("amnst.")}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_each_layer_imports_only_what_it_may(path):
    module, imports = _name(path), imported(path)
    if _within(module, "amnst.engine"):
        stray = {name for name in imports if not (_within(name, "amnst.engine") or _within(name, "amnst.config"))
                 and name != "amnst"}
        assert not stray, f"{module} is engine code and imports {sorted(stray)}"
    if not _within(module, "amnst.bench"):
        assert not {name for name in imports if _within(name, "amnst.bench")}, f"{module} imports the harness"
    if _within(module, "amnst.batch"):
        assert not {name for name in imports if _within(name, "amnst.cli")}, f"{module} imports the CLI"


def test_the_rules_see_imports_inside_functions(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("def f():\n    from amnst.bench import frontier\n    import amnst.cli\n")
    assert {"amnst.bench", "amnst.bench.frontier", "amnst.cli"} <= imported(source)
