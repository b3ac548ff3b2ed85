"""The app bundle `flwr run` ships: the apps' sources, and not the measured results, which grow
with every benchmark and once pushed it past Flower's size limit."""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import FAB_MAX_SIZE

ROOT = Path(__file__).resolve().parents[1]


def test_bundle_holds_the_apps_and_their_library_and_nothing_measured():
    fab = build_fab_from_disk(ROOT)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "components"
    ]
    for reference in components.values():  # "simulations.server_app:app"
        assert reference.split(":")[0].replace(".", "/") + ".py" in names
    assert "chord_fl/quant/quantizer.py" in names and "strategies/chord.py" in names
    assert not [name for name in names if name.startswith(("benchmarks/", "tests/"))]
    assert len(fab) < FAB_MAX_SIZE // 4, f"{len(fab):,} bytes, close to Flower's limit"
