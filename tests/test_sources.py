"""Tests for chord_fl.data.sources: data dir resolution, locating files and downloading."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.error
import zipfile
from pathlib import Path

import pytest

from chord_fl.data import sources
from chord_fl.data.sources import (
    DATA_DIR_ENV,
    DATASETS,
    FORMATS,
    DatasetSpec,
    dataset_defaults,
    locate,
    resolve_data_dir,
)
from chord_fl.errors import ConfigError, DataError

URL = "https://example.invalid/toy.zip"
ROWS = b"1\t10\t5\t100\n2\t20\t3\t200\n"


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _write(path: Path, data: bytes = ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if a test reaches the real network."""

    def refuse(url, dest):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(sources, "_fetch", refuse)


@pytest.fixture
def toy(monkeypatch):
    """Register a downloadable 'toy' data set whose archive is served by a fake fetch."""
    payload = _zip_bytes({"toy/u.data": ROWS, "toy/README": b"terms"})
    spec = DatasetSpec(
        "toy",
        (("toy/u.data", "grouplens-tab"),),
        url=URL,
        md5=hashlib.md5(payload).hexdigest(),
        archive_members=(("toy/u.data", "toy/u.data"),),
    )
    monkeypatch.setitem(DATASETS, "toy", spec)
    calls: list[str] = []

    def fake_fetch(url: str, dest: Path) -> None:
        calls.append(url)
        dest.write_bytes(payload)

    monkeypatch.setattr(sources, "_fetch", fake_fetch)
    return spec, calls


# --- data directory resolution -------------------------------------------------------------


def test_resolve_prefers_argument_then_env_then_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(DATA_DIR_ENV)
    assert resolve_data_dir() == tmp_path / "xdg" / "chord-fl"


def test_resolve_falls_back_to_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir() == tmp_path / ".cache" / "chord-fl"


def test_locate_uses_env_dir(monkeypatch, tmp_path, no_network):
    path = _write(tmp_path / "ml-100k" / "u.data")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert locate("ml-100k") == (path, "grouplens-tab")


# --- registry -------------------------------------------------------------------------------


def test_registry_entries():
    assert set(DATASETS) >= {"ml-100k", "ml-1m", "yelp", "amazon-beauty", "amazon-sports"}
    assert DATASETS["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert DATASETS["ml-1m"].url.endswith("/ml-1m.zip")
    assert DATASETS["yelp"].url is None
    for spec in DATASETS.values():
        assert all(format in FORMATS for _, format in spec.files)
    assert dataset_defaults("ml-1m") == (0, 5)
    assert dataset_defaults("ml-100k") == (0, 0)
    assert dataset_defaults("some/file.csv") == (0, 0)


# --- locating existing files ----------------------------------------------------------------


def test_locate_existing_registry_file(tmp_path, no_network):
    path = _write(tmp_path / "ml-100k" / "u.data")
    assert locate("ml-100k", tmp_path) == (path, "grouplens-tab")


def test_locate_ml1m_picks_first_existing_candidate(tmp_path, no_network):
    pairs = _write(tmp_path / "ml-1m" / "ml-1m.txt", b"1 10\n1 11\n")
    assert locate("ml-1m", tmp_path) == (pairs, "pairs")
    dat = _write(tmp_path / "ml-1m" / "ratings.dat", b"1::10::5::100\n")
    assert locate("ml-1m", tmp_path) == (dat, "grouplens-dat")


def test_locate_no_url_dataset_names_path(tmp_path, no_network):
    with pytest.raises(DataError) as info:
        locate("yelp", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "yelp" / "Yelp.txt") in msg
    assert DATA_DIR_ENV in msg and "--data-dir" in msg


def test_locate_without_download_does_not_fetch(tmp_path, no_network):
    with pytest.raises(DataError, match="ml-100k.zip"):
        locate("ml-100k", tmp_path, download=False)
    assert not any(tmp_path.iterdir())


# --- downloading ----------------------------------------------------------------------------


def test_download_extracts_members(tmp_path, toy):
    _, calls = toy
    root = tmp_path / "new" / "dir"
    path, format = locate("toy", root)
    assert (path, format) == (root / "toy" / "u.data", "grouplens-tab")
    assert path.read_bytes() == ROWS
    assert calls == [URL]
    assert not (root / "toy" / "README").exists()  # only the listed members
    assert not list(root.rglob("*.part"))
    # A second call finds the file and does not download again.
    assert locate("toy", root) == (path, format)
    assert calls == [URL]


def test_download_member_to_other_destination(tmp_path, toy, monkeypatch):
    spec, _ = toy
    moved = DatasetSpec(
        "toy",
        (("elsewhere/data.tsv", "table"),),
        url=spec.url,
        md5=spec.md5,
        archive_members=(("toy/u.data", "elsewhere/data.tsv"),),
    )
    monkeypatch.setitem(DATASETS, "toy", moved)
    assert locate("toy", tmp_path) == (tmp_path / "elsewhere" / "data.tsv", "table")
    assert (tmp_path / "elsewhere" / "data.tsv").read_bytes() == ROWS


def test_download_md5_mismatch(tmp_path, toy, monkeypatch):
    spec, _ = toy
    bad = "0" * 32
    monkeypatch.setitem(DATASETS, "toy", DatasetSpec(**{**spec.__dict__, "md5": bad}))
    with pytest.raises(DataError) as info:
        locate("toy", tmp_path)
    msg = str(info.value)
    assert URL in msg and bad in msg and spec.md5 in msg
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_download_missing_member(tmp_path, toy, monkeypatch):
    spec, _ = toy
    odd = DatasetSpec(**{**spec.__dict__, "archive_members": (("toy/absent", "toy/u.data"),)})
    monkeypatch.setitem(DATASETS, "toy", odd)
    with pytest.raises(DataError, match="toy/absent"):
        locate("toy", tmp_path)
    assert not (tmp_path / "toy" / "u.data").exists()


@pytest.mark.parametrize(
    "exc", [urllib.error.URLError("no route"), TimeoutError("timed out"), OSError("reset")]
)
def test_download_offline(tmp_path, monkeypatch, exc):
    def offline(url: str, dest: Path) -> None:
        dest.write_bytes(b"half")  # a partial file must not survive
        raise exc

    monkeypatch.setattr(sources, "_fetch", offline)
    with pytest.raises(DataError) as info:
        locate("ml-100k", tmp_path)
    msg = str(info.value)
    assert "ml-100k" in msg and str(tmp_path) in msg
    assert DATA_DIR_ENV in msg and "--data-dir" in msg
    assert DATASETS["ml-100k"].url in msg
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_fetch_streams_to_file(tmp_path):
    src = _write(tmp_path / "src.bin", os.urandom(200_000))
    dest = tmp_path / "dest.bin"
    sources._fetch(src.as_uri(), dest)  # file:// needs no network but goes through urlopen
    assert dest.read_bytes() == src.read_bytes()


# --- paths and formats ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("ratings.csv", "table"),
        ("ratings.TSV", "table"),
        ("u.data", "grouplens-tab"),
        ("ratings.dat", "grouplens-dat"),
    ],
)
def test_locate_path_infers_format(tmp_path, name, format):
    path = _write(tmp_path / name)
    assert locate(str(path)) == (path, format)


def test_locate_path_explicit_format(tmp_path):
    path = _write(tmp_path / "seqs.txt")
    assert locate(str(path), format="per-user") == (path, "per-user")
    assert locate(str(path), format="pairs") == (path, "pairs")


def test_locate_path_needs_format(tmp_path):
    path = _write(tmp_path / "seqs.txt")
    with pytest.raises(ConfigError) as info:
        locate(str(path))
    assert all(f in str(info.value) for f in FORMATS)


def test_locate_unknown_format(tmp_path):
    path = _write(tmp_path / "ratings.csv")
    with pytest.raises(ConfigError) as info:
        locate(str(path), format="parquet")
    assert "parquet" in str(info.value)
    assert all(f in str(info.value) for f in FORMATS)


def test_locate_unknown_dataset(tmp_path):
    with pytest.raises(ConfigError) as info:
        locate("ml-20m", tmp_path)
    msg = str(info.value)
    assert "'ml-20m'" in msg and "ml-100k" in msg and "ml-1m" in msg and "path" in msg
    with pytest.raises(ConfigError):
        locate(str(tmp_path / "missing.csv"))


# --- shared real data -----------------------------------------------------------------------


def test_locate_shared_ml100k(no_network):
    root = os.environ.get(DATA_DIR_ENV)
    if not root or not (Path(root) / "ml-100k" / "u.data").is_file():
        pytest.skip(f"{DATA_DIR_ENV} unset or holds no ml-100k/u.data")
    assert locate("ml-100k", root) == (Path(root) / "ml-100k" / "u.data", "grouplens-tab")
