"""The layering README's "Architecture" section states, checked on the source itself.

method (chord_fl outside chord_fl.federation) <- runtime (chord_fl.federation)
    <- Flower strategies (strategies) <- Flower apps and commands (simulations)

A layer imports only layers to its left; nothing in chord_fl imports Flower; the device side of
the Flower apps imports no server-side strategy code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("method", "runtime", "strategies", "simulations")
DEVICE_SIDE = ("simulations/client.py", "simulations/client_app.py")


def _layer(module: str) -> str | None:
    if module.startswith("chord_fl.federation"):
        return "runtime"
    if module.split(".")[0] in ("chord_fl", "strategies", "simulations"):
        return "method" if module.startswith("chord_fl") else module.split(".")[0]
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources() -> list[Path]:
    return sorted(
        p for top in ("chord_fl", "strategies", "simulations") for p in (ROOT / top).rglob("*.py")
    )


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_module_imports_only_its_own_layer_or_below(path):
    own = LAYERS.index(_layer(_module(path)))
    for imported in _imports(path):
        layer = _layer(imported)
        if layer is not None:
            assert LAYERS.index(layer) <= own, f"{_module(path)} imports {imported}"
        if own <= LAYERS.index("runtime"):
            assert imported.split(".")[0] != "flwr", f"{_module(path)} imports Flower"


@pytest.mark.parametrize("name", DEVICE_SIDE)
def test_device_side_imports_no_server_strategy_code(name):
    for imported in _imports(ROOT / name):
        if imported.startswith("strategies"):
            assert imported in ("strategies", "strategies.protocol") or imported.startswith(
                "strategies.protocol."
            ), f"{name} imports {imported}"


def test_no_private_flower_module():
    for path in _sources():
        for imported in _imports(path):
            assert not imported.startswith("flwr.supercore"), f"{path} imports {imported}"


def test_the_library_and_runtime_import_without_flower():
    modules = [_module(p) for p in _sources() if _layer(_module(p)) in ("method", "runtime")]
    code = "import sys; sys.modules['flwr'] = None\n" + "\n".join(
        f"import {m}" for m in modules if not m.endswith("__main__")
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_run_config_and_strategy_registry_name_the_same_strategies():
    from chord_fl.federation.runconfig import STRATEGIES as NAMES
    from chord_fl.methods import METHODS
    from strategies.registry import STRATEGIES

    assert tuple(STRATEGIES) == NAMES
    assert set(METHODS) <= set(NAMES)
