"""Readers for interaction files: each returns a (user, item, timestamp) table in file order.

Every reader checks every line; the first malformed line raises a `DataError` naming the file and
the line number, so a file is never half-loaded. Formats without timestamps use the line position
(and the position within a line) as time, which preserves the file's own time order.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from chord_fl.errors import ConfigError, DataError

COLUMNS = ("user", "item", "timestamp")
_TABLE_ALIASES = {
    "user": ("user", "user_id", "userid", "uid"),
    "item": ("item", "item_id", "itemid", "iid"),
    "timestamp": ("timestamp", "time", "ts", "unix_time"),
}


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    try:
        with open(path, encoding=encoding, errors="strict") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text ({exc.reason})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _int(text: str, what: str, path: Path, number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}, line {number}: {what} {text!r} is not an integer") from None


def _float(text: str, what: str, path: Path, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}, line {number}: {what} {text!r} is not a number") from None
    if not np.isfinite(value):
        raise DataError(f"{path}, line {number}: {what} {text!r} is not finite")
    return value


def _fields(line: str, sep: str | None, count: int, path: Path, number: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) != count:
        raise DataError(
            f"{path}, line {number}: expected {count} fields separated by {sep or 'spaces'!r}, "
            f"found {len(fields)}: {line[:80]!r}"
        )
    return fields


def _frame(users: list, items: list, times: list) -> pd.DataFrame:
    return pd.DataFrame({"user": users, "item": items, "timestamp": np.asarray(times, float)})


def _read_rated(path: Path, sep: str, encoding: str) -> pd.DataFrame:
    users, items, times = [], [], []
    for number, line in _lines(path, encoding):
        user, item, _rating, stamp = _fields(line, sep, 4, path, number)
        users.append(_int(user, "user id", path, number))
        items.append(_int(item, "item id", path, number))
        times.append(_float(stamp, "timestamp", path, number))
    return _frame(users, items, times)


def read_grouplens_tab(path: Path) -> pd.DataFrame:
    """MovieLens-100K `u.data`: `user \\t item \\t rating \\t unix_time`, rows in any order."""
    return _read_rated(path, "\t", "utf-8")


def read_grouplens_dat(path: Path) -> pd.DataFrame:
    """MovieLens-1M `ratings.dat`: `UserID::MovieID::Rating::Timestamp` (ISO-8859-1)."""
    return _read_rated(path, "::", "iso-8859-1")


def read_pairs(path: Path) -> pd.DataFrame:
    """`user item` per line, time-ordered within a user."""
    users, items = [], []
    for number, line in _lines(path):
        user, item = _fields(line, None, 2, path, number)
        users.append(_int(user, "user id", path, number))
        items.append(_int(item, "item id", path, number))
    return _frame(users, items, range(len(users)))


def read_per_user(path: Path) -> pd.DataFrame:
    """`user item1 item2 ...` one line per user, items time-ordered (Yelp, Amazon)."""
    users, items = [], []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) < 2:
            raise DataError(f"{path}, line {number}: a user id and at least one item expected")
        user = _int(fields[0], "user id", path, number)
        items.extend(_int(item, "item id", path, number) for item in fields[1:])
        users.extend([user] * (len(fields) - 1))
    return _frame(users, items, range(len(users)))


def _table_columns(header: list[str], path: Path) -> list[int]:
    names = [name.strip().lower() for name in header]
    positions = []
    for column, aliases in _TABLE_ALIASES.items():
        found = [i for i, name in enumerate(names) if name in aliases]
        if not found:
            raise DataError(
                f"{path}, line 1: no {column} column in header {header}; "
                f"expected one of {', '.join(aliases)}"
            )
        positions.append(found[0])
    return positions


def read_table(path: Path) -> pd.DataFrame:
    """CSV or TSV with a header naming user, item and timestamp columns (others are ignored).

    Ids are kept as text so that non-numeric ids (Amazon ASINs, say) work; timestamps are numbers.
    """
    users, items, times = [], [], []
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            first = handle.readline()
        delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in first else ","
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = csv.reader(handle, delimiter=delimiter)
            header = next(rows, None)
            if header is None:
                raise DataError(f"{path}: empty file, expected a header line")
            user_col, item_col, time_col = _table_columns(header, path)
            for row in rows:
                number = rows.line_num
                if not row or not any(field.strip() for field in row):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {number}: expected {len(header)} fields, found {len(row)}"
                    )
                user, item = row[user_col].strip(), row[item_col].strip()
                if not user or not item:
                    raise DataError(f"{path}, line {number}: empty user or item id")
                users.append(user)
                items.append(item)
                times.append(_float(row[time_col], "timestamp", path, number))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid utf-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    return _frame(users, items, times)


READERS: dict[str, Callable[[Path], pd.DataFrame]] = {
    "grouplens-tab": read_grouplens_tab,
    "grouplens-dat": read_grouplens_dat,
    "pairs": read_pairs,
    "per-user": read_per_user,
    "table": read_table,
}


def read_interactions(path: str | Path, format: str) -> pd.DataFrame:
    """Read `path` in `format`; an empty file is an error, not an empty data set."""
    if format not in READERS:
        raise ConfigError(f"unknown data format {format!r}; known: {', '.join(READERS)}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    frame = READERS[format](path)
    if frame.empty:
        raise DataError(f"{path}: no interactions found")
    return frame
