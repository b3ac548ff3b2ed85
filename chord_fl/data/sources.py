"""Where a data set's file lives, and fetching MovieLens when it is missing."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from chord_fl.errors import ConfigError, DataError

DATA_DIR_ENV = "CHORD_DATA_DIR"
FORMATS = ("grouplens-tab", "grouplens-dat", "pairs", "per-user", "table")
_TIMEOUT_S = 60.0
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DatasetSpec:
    """A known data set: candidate files (relative path, format) and where to download it."""

    name: str
    files: tuple[tuple[str, str], ...]
    url: str | None = None
    md5: str | None = None
    archive_members: tuple[tuple[str, str], ...] = ()
    user_min: int = 0
    item_min: int = 0


_ML = "https://files.grouplens.org/datasets/movielens"
DATASETS: dict[str, DatasetSpec] = {
    "ml-100k": DatasetSpec(
        "ml-100k",
        (("ml-100k/u.data", "grouplens-tab"),),
        url=f"{_ML}/ml-100k.zip",
        md5="0e33842e24a9c977be4e0107933c0723",
        archive_members=(("ml-100k/u.data", "ml-100k/u.data"),),
    ),
    "ml-1m": DatasetSpec(
        "ml-1m",
        (("ml-1m/ratings.dat", "grouplens-dat"), ("ml-1m/ml-1m.txt", "pairs")),
        url=f"{_ML}/ml-1m.zip",
        md5="c4d9eecfca2ab87c1945afe126590906",
        archive_members=(("ml-1m/ratings.dat", "ml-1m/ratings.dat"),),
        item_min=5,  # the SASRec paper's 3,416-item setting
    ),
    "yelp": DatasetSpec("yelp", (("yelp/Yelp.txt", "per-user"),)),
    "amazon-beauty": DatasetSpec("amazon-beauty", (("amazon-beauty/Beauty.txt", "per-user"),)),
    "amazon-sports": DatasetSpec(
        "amazon-sports", (("amazon-sports/Sports_and_Outdoors.txt", "per-user"),)
    ),
}


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The argument if given, else $CHORD_DATA_DIR, else the user cache dir."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "chord-fl"


def _fetch(url: str, dest: Path) -> None:
    """Stream `url` into `dest`, showing progress."""
    with (
        urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp,
        open(dest, "wb") as out,
    ):
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(spec: DatasetSpec, root: Path) -> None:
    """Fetch, verify and unpack `spec`'s archive under `root`; raise DataError on failure."""
    assert spec.url is not None
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}-", suffix=".part", dir=root)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _fetch(spec.url, tmp)
        # URLError and socket timeouts are OSErrors; a cut connection is an HTTPException
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(
                f"could not download data set '{spec.name}' from {spec.url}: {exc}. "
                f"Searched {root}; download {spec.url} by hand and unpack it there, or point "
                f"--data-dir or the {DATA_DIR_ENV} environment variable at a directory holding "
                + ", ".join(rel for rel, _ in spec.files)
            ) from exc
        actual = _md5(tmp)
        if spec.md5 is not None and actual != spec.md5:
            raise DataError(
                f"download of {spec.url} is corrupt: expected md5 {spec.md5}, got {actual}"
            )
        archive = root / f"{spec.name}.zip"
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member, rel in spec.archive_members:
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                try:
                    with zf.open(member) as src, open(part, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
                    os.replace(part, dest)
                finally:
                    part.unlink(missing_ok=True)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"archive {archive} from {spec.url} is not as expected: {exc}") from exc


def _infer_format(path: Path) -> str:
    if path.suffix.lower() in (".csv", ".tsv"):
        return "table"
    if path.name == "u.data":
        return "grouplens-tab"
    if path.suffix.lower() == ".dat":
        return "grouplens-dat"
    raise ConfigError(
        f"cannot tell the format of {path}; pass a format, one of: {', '.join(FORMATS)}"
    )


def _first_existing(spec: DatasetSpec, root: Path) -> tuple[Path, str] | None:
    for rel, file_format in spec.files:
        if (root / rel).is_file():
            return root / rel, file_format
    return None


def locate(
    dataset: str,
    data_dir: str | os.PathLike | None = None,
    format: str | None = None,
    download: bool = True,
) -> tuple[Path, str]:
    """Return (file path, reader format) for a registry name or a path to a file.

    `format` only applies to paths: a registry entry's format follows the candidate file found.
    """
    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    spec = DATASETS.get(dataset)
    if spec is not None:
        root = resolve_data_dir(data_dir)
        found = _first_existing(spec, root)
        if found is None and spec.url is not None and download:
            _download(spec, root)
            found = _first_existing(spec, root)
        if found is not None:
            return found
        wanted = ", ".join(str(root / rel) for rel, _ in spec.files)
        hint = f" or download {spec.url} and unpack it there" if spec.url else ""
        raise DataError(
            f"data set '{dataset}' not found: expected {wanted}{hint}; set --data-dir or the "
            f"{DATA_DIR_ENV} environment variable to the directory that holds it"
        )
    path = Path(dataset).expanduser()
    if path.is_file():
        return path, format or _infer_format(path)
    raise ConfigError(
        f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)} or a path to a file"
    )


def dataset_defaults(dataset: str) -> tuple[int, int]:
    """(user_min, item_min) count filters for a registry name; (0, 0) for a file."""
    spec = DATASETS.get(dataset)
    return (spec.user_min, spec.item_min) if spec else (0, 0)
