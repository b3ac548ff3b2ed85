"""Tests for the data pipeline: readers, sequencing and k-core filtering, the time split,
negative sampling, the synthetic generator, real MovieLens-100K and the `data` command."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chord_fl.cli import main
from chord_fl.data import (
    PADDING,
    SequenceData,
    build_sequences,
    filter_counts,
    load_dataset,
    make_split,
    pad_left,
    read_interactions,
    sample_negatives,
    synthetic_dataset,
    synthetic_interactions,
)
from chord_fl.data.sources import DATA_DIR_ENV
from chord_fl.errors import ConfigError, DataError


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def _table(rows: list[tuple]) -> pd.DataFrame:
    """(user, item, timestamp) rows as the readers return them."""
    users, items, times = zip(*rows, strict=True)
    return pd.DataFrame({"user": users, "item": items, "timestamp": np.asarray(times, float)})


def _seqdata(sequences: list[list[int]], num_items: int = 1000) -> SequenceData:
    """A SequenceData holding exactly these (already remapped) sequences."""
    return SequenceData(
        "toy",
        tuple(np.asarray(seq, dtype=np.int64) for seq in sequences),
        num_items,
        np.arange(1, len(sequences) + 1),
        np.arange(1, num_items + 1),
    )


def _columns(frame: pd.DataFrame) -> tuple[list, list, list]:
    assert list(frame.columns) == ["user", "item", "timestamp"]
    return frame["user"].tolist(), frame["item"].tolist(), frame["timestamp"].tolist()


# --- readers ---------------------------------------------------------------------------------


def test_read_grouplens_tab(tmp_path):
    path = _write(
        tmp_path,
        "u.data",
        "196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n22\t377\t1\t878887116\n",
    )
    users, items, times = _columns(read_interactions(path, "grouplens-tab"))
    assert users == [196, 186, 22]
    assert items == [242, 302, 377]
    assert times == [881250949.0, 891717742.0, 878887116.0]


def test_read_grouplens_dat_is_iso_8859_1(tmp_path):
    # 0xE9 ('é' in ISO-8859-1) is not valid UTF-8; it sits in the rating field, which is ignored.
    path = _write(
        tmp_path,
        "ratings.dat",
        b"1::1193::5::978300760\r\n1::661::\xe9::978302109\r\n6040::3408::4::978300275\r\n",
    )
    users, items, times = _columns(read_interactions(path, "grouplens-dat"))
    assert users == [1, 1, 6040]
    assert items == [1193, 661, 3408]
    assert times == [978300760.0, 978302109.0, 978300275.0]


def test_read_pairs_uses_line_position_as_time(tmp_path):
    path = _write(tmp_path, "ml-1m.txt", "1 10\n1  11\n\n2\t10\n1 12\n")
    users, items, times = _columns(read_interactions(path, "pairs"))
    assert users == [1, 1, 2, 1]
    assert items == [10, 11, 10, 12]
    assert times == [0.0, 1.0, 2.0, 3.0]


def test_read_per_user_uses_position_as_time(tmp_path):
    path = _write(tmp_path, "Beauty.txt", "5 3 1 2\n\n4 9\n")
    users, items, times = _columns(read_interactions(path, "per-user"))
    assert users == [5, 5, 5, 4]
    assert items == [3, 1, 2, 9]
    assert times == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        (
            "reviews.csv",
            'rating,ItemID, UserID ,note,Timestamp\n5,B07,A1,"hi, there",100.5\n'
            "3,0042,A2,x,99\n\n4,B07,10,y,7\n",
        ),
        (
            "reviews.tsv",
            "iid\tuid\tts\textra\nB07\tA1\t100.5\ta\n0042\tA2\t99\tb\n\nB07\t10\t7\tc\n",
        ),
        (
            # tab-separated without a .tsv suffix: detected from the header line
            "reviews.txt",
            "item_id\tunix_time\tuser_id\nB07\t100.5\tA1\n0042\t99\tA2\nB07\t7\t10\n",
        ),
    ],
)
def test_read_table_aliases_extra_columns_and_string_ids(tmp_path, name, content):
    path = _write(tmp_path, name, content)
    users, items, times = _columns(read_interactions(path, "table"))
    assert users == ["A1", "A2", "10"]
    assert items == ["B07", "0042", "B07"]  # leading zeros survive: ids stay text
    assert times == [100.5, 99.0, 7.0]


# --- malformed input -------------------------------------------------------------------------

_TAB_OK = "1\t10\t5\t100\n"
_DAT_OK = "1::10::5::100\n"

# Every bad line is line 3, after a blank line 2 that must still be counted.
MALFORMED = [
    ("grouplens-tab", "u.data", _TAB_OK + "\n1\t10\t5\n", "found 3"),
    ("grouplens-tab", "u.data", _TAB_OK + "\n1 10 5 100\n", "found 1"),
    ("grouplens-tab", "u.data", _TAB_OK + "\nu7\t10\t5\t100\n", "'u7'"),
    ("grouplens-tab", "u.data", _TAB_OK + "\n1\t2.5\t5\t100\n", "'2.5'"),
    ("grouplens-tab", "u.data", _TAB_OK + "\n1\t10\t5\tnoon\n", "'noon'"),
    ("grouplens-tab", "u.data", _TAB_OK + "\n1\t10\t5\tnan\n", "not finite"),
    ("grouplens-tab", "u.data", _TAB_OK + "\n1\t10\t5\t-inf\n", "not finite"),
    ("grouplens-dat", "ratings.dat", _DAT_OK + "\n1::10::5\n", "found 3"),
    ("grouplens-dat", "ratings.dat", _DAT_OK + "\n1::ten::5::100\n", "'ten'"),
    ("grouplens-dat", "ratings.dat", _DAT_OK + "\n1::10::5::1e999\n", "not finite"),
    ("pairs", "pairs.txt", "1 10\n\n1 10 11\n", "found 3"),
    ("pairs", "pairs.txt", "1 10\n\n1\n", "found 1"),
    ("pairs", "pairs.txt", "1 10\n\n1 x\n", "'x'"),
    ("per-user", "seq.txt", "1 10 11\n\n7\n", "at least one item"),
    ("per-user", "seq.txt", "1 10 11\n\n7 1 y 3\n", "'y'"),
    ("per-user", "seq.txt", "1 10 11\n\n7.0 1\n", "'7.0'"),
    ("table", "t.csv", "user,item,ts\n\n1,10\n", "expected 3 fields, found 2"),
    ("table", "t.csv", "user,item,ts\n\n1,10,100,9\n", "expected 3 fields, found 4"),
    ("table", "t.csv", "user,item,ts\n\n1,10,later\n", "'later'"),
    ("table", "t.csv", "user,item,ts\n\n1,10,inf\n", "not finite"),
    ("table", "t.csv", "user,item,ts\n\n1, ,100\n", "empty user or item id"),
    ("table", "t.tsv", "user\titem\tts\n\n1\t10\n", "expected 3 fields, found 2"),
]


@pytest.mark.parametrize(("format", "name", "content", "detail"), MALFORMED)
def test_malformed_line_names_file_and_line(tmp_path, format, name, content, detail):
    path = _write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_interactions(path, format)
    msg = str(info.value)
    assert name in msg
    assert ", line 3:" in msg
    assert detail in msg


def test_bad_line_deep_in_file_is_found(tmp_path):
    lines = [f"{u}\t{u + 1}\t4\t{1000 + u}" for u in range(1, 50)]
    lines[41] = "42\t43\t4\tsoon"
    path = _write(tmp_path, "u.data", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r", line 42: timestamp 'soon'"):
        read_interactions(path, "grouplens-tab")


@pytest.mark.parametrize(
    "header", ["usr,item,ts", "user,thing,ts", "user,item,date", "user;item;ts"]
)
def test_table_missing_header_column(tmp_path, header):
    path = _write(tmp_path, "t.csv", f"{header}\n1,2,3\n")
    with pytest.raises(DataError) as info:
        read_interactions(path, "table")
    msg = str(info.value)
    assert "t.csv" in msg and ", line 1:" in msg and "column" in msg


def test_unknown_format_is_config_error(tmp_path):
    path = _write(tmp_path, "u.data", _TAB_OK)
    with pytest.raises(ConfigError, match="'parquet'"):
        read_interactions(path, "parquet")


@pytest.mark.parametrize("format", ["grouplens-tab", "grouplens-dat", "pairs", "per-user", "table"])
def test_missing_file_is_data_error(tmp_path, format):
    with pytest.raises(DataError, match="not found"):
        read_interactions(tmp_path / "nowhere.txt", format)


@pytest.mark.parametrize("format", ["grouplens-tab", "grouplens-dat", "pairs", "per-user", "table"])
@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_data_error(tmp_path, format, content):
    path = _write(tmp_path, "empty.txt", content)
    with pytest.raises(DataError, match="empty.txt"):
        read_interactions(path, format)


def test_header_only_table_is_data_error(tmp_path):
    path = _write(tmp_path, "t.csv", "user,item,ts\n\n")
    with pytest.raises(DataError, match="no interactions"):
        read_interactions(path, "table")


def test_invalid_utf8_is_data_error(tmp_path):
    path = _write(tmp_path, "u.data", b"1\t10\t5\t100\n2\t1\xff\t5\t100\n")
    with pytest.raises(DataError, match="utf-8"):
        read_interactions(path, "grouplens-tab")


def test_invalid_utf8_table_is_data_error(tmp_path):
    path = _write(tmp_path, "t.csv", b"user,item,ts\n1,caf\xe9,100\n")
    with pytest.raises(DataError, match="utf-8"):
        read_interactions(path, "table")


def test_table_with_byte_order_mark(tmp_path):
    path = _write(tmp_path, "t.csv", "\ufeffuser,item,ts\nu1,i1,5\n".encode())
    frame = read_interactions(path, "table")
    assert frame["user"].tolist() == ["u1"] and frame["timestamp"].tolist() == [5.0]


# --- sequences -------------------------------------------------------------------------------


def test_build_sequences_orders_by_time_and_remaps():
    frame = _table(
        [
            (20, 30, 5.0),
            (10, 40, 2.0),
            (20, 10, 1.0),
            (10, 20, 2.0),  # tie with (10, 40): file order keeps 40 first
            (20, 40, 3.0),
            (10, 10, 0.0),
        ]
    )
    data = build_sequences(frame, name="toy")
    assert data.name == "toy"
    assert data.raw_user_ids.tolist() == [10, 20]
    assert data.raw_item_ids.tolist() == [10, 20, 30, 40]
    assert [seq.tolist() for seq in data.sequences] == [[1, 4, 2], [1, 4, 3]]
    assert data.raw_item_ids[data.sequences[0] - 1].tolist() == [10, 40, 20]
    assert data.raw_item_ids[data.sequences[1] - 1].tolist() == [10, 40, 30]
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 4, 6)
    assert data.stats == {
        "before_filter": {"users": 2, "items": 4, "interactions": 6},
        "user_min": 0,
        "item_min": 0,
    }
    assert PADDING == 0 and all(seq.min() >= 1 for seq in data.sequences)


def test_build_sequences_ties_are_stable_at_scale():
    rng = np.random.default_rng(7)
    rows = [
        (int(u), int(i), float(t))
        for u, i, t in zip(
            rng.integers(1, 4, 600), rng.permutation(600) + 1, rng.integers(0, 3, 600), strict=True
        )
    ]
    data = build_sequences(_table(rows), name="ties")
    for code, user in enumerate(data.raw_user_ids):
        mine = [(t, i) for u, i, t in rows if u == user]
        expected = [i for _, i in sorted(mine, key=lambda pair: pair[0])]  # sorted() is stable
        assert data.raw_item_ids[data.sequences[code] - 1].tolist() == expected


def test_build_sequences_string_ids_sort_as_text(tmp_path):
    path = _write(tmp_path, "t.csv", "user,item,ts\nb,9,1\nb,10,2\na,x,1\na,9,0\n")
    data = build_sequences(read_interactions(path, "table"), name="t")
    assert data.raw_user_ids.tolist() == ["a", "b"]
    assert data.raw_item_ids.tolist() == ["10", "9", "x"]  # text order: "10" < "9"
    assert [seq.tolist() for seq in data.sequences] == [[2, 3], [2, 1]]


# u1..u4 each have two items; d is seen once. With user_min = item_min = 2, dropping d leaves u4
# with one item, dropping u4 leaves c with one user, dropping c leaves u3 with one item; only the
# u1/u2 x a/b block survives. A single pass would drop only the (u4, d) row.
KCORE_ROWS = [
    ("u1", "a", 0),
    ("u1", "b", 1),
    ("u2", "a", 2),
    ("u2", "b", 3),
    ("u3", "b", 4),
    ("u3", "c", 5),
    ("u4", "c", 6),
    ("u4", "d", 7),
]


def test_filter_counts_reaches_the_k_core():
    frame = _table(KCORE_ROWS)
    core = filter_counts(frame, user_min=2, item_min=2)
    kept = set(zip(core["user"], core["item"], strict=True))
    assert kept == {("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")}
    again = filter_counts(core, user_min=2, item_min=2)
    assert len(again) == len(core)


@pytest.mark.parametrize(
    ("user_min", "item_min", "expected"),
    [
        (0, 0, {r[:2] for r in KCORE_ROWS}),
        (2, 0, {r[:2] for r in KCORE_ROWS}),
        (3, 0, set()),
        # only d is rare; u4 keeps c and stays since user_min is 0
        (0, 2, {r[:2] for r in KCORE_ROWS} - {("u4", "d")}),
        # a and b are seen 2 and 3 times: with item_min=3 only b survives, and each user
        # then holds one item
        (1, 3, {("u1", "b"), ("u2", "b"), ("u3", "b")}),
    ],
)
def test_filter_counts_cases(user_min, item_min, expected):
    core = filter_counts(_table(KCORE_ROWS), user_min=user_min, item_min=item_min)
    assert set(zip(core["user"], core["item"], strict=True)) == expected


def test_build_sequences_after_k_core():
    data = build_sequences(_table(KCORE_ROWS), name="kcore", user_min=2, item_min=2)
    assert data.raw_user_ids.tolist() == ["u1", "u2"]
    assert data.raw_item_ids.tolist() == ["a", "b"]
    assert [seq.tolist() for seq in data.sequences] == [[1, 2], [1, 2]]
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 2, 4)
    assert data.stats == {
        "before_filter": {"users": 4, "items": 4, "interactions": 8},
        "user_min": 2,
        "item_min": 2,
    }


@pytest.mark.parametrize(("user_min", "item_min"), [(-1, 0), (0, -1), (-3, -3)])
def test_negative_filters_are_config_errors(user_min, item_min):
    with pytest.raises(ConfigError):
        filter_counts(_table(KCORE_ROWS), user_min, item_min)
    with pytest.raises(ConfigError):
        build_sequences(_table(KCORE_ROWS), "k", user_min=user_min, item_min=item_min)


def test_filtering_everything_is_data_error():
    with pytest.raises(DataError, match=r"^gone: .*user_min=3"):
        build_sequences(_table(KCORE_ROWS), "gone", user_min=3)


# --- split -----------------------------------------------------------------------------------

ITEMS7 = [10, 20, 30, 40, 50, 60, 70]


@pytest.mark.parametrize(
    ("rounds", "history", "validation", "targets"),
    [
        (1, [10, 20, 30, 40, 50], 60, [70]),
        (2, [10, 20, 30, 40], 50, [60, 70]),
        (3, [10, 20, 30], 40, [50, 60, 70]),
    ],
)
def test_split_boundaries_by_hand(rounds, history, validation, targets):
    user = make_split(_seqdata([ITEMS7]), rounds=rounds).users[0]
    assert user.history.tolist() == history
    assert user.window(0).tolist() == history
    assert user.target(0) == validation
    for r, target in enumerate(targets, start=1):
        assert user.target(r) == target
        assert user.window(r).tolist() == ITEMS7[: ITEMS7.index(target)]
    for bad in (-1, rounds + 1):
        with pytest.raises(ConfigError):
            user.target(bad)


@pytest.mark.parametrize("rounds", [1, 2, 3])
@pytest.mark.parametrize("n", [6, 7, 12])
def test_split_boundaries_formula(rounds, n):
    items = list(range(101, 101 + n))
    split = make_split(_seqdata([items]), rounds=rounds)
    user = split.users[0]
    assert user.history.tolist() == items[: n - rounds - 1]
    assert user.target(0) == items[n - rounds - 1]
    for r in range(1, rounds + 1):
        assert user.target(r) == items[n - rounds + r - 1]
        assert user.window(r).tolist() == items[: n - rounds + r - 1]
    assert split.targets(rounds).tolist() == [items[-1]]


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_split_targets_never_in_history(rounds):
    data = synthetic_dataset(seed=3, num_users=150, min_length=3, max_length=30)
    # The same lengths with items replaced by their positions (1-based): items repeat, positions
    # do not, so this checks where targets are, not which item they are.
    positions = _seqdata([list(range(1, len(seq) + 1)) for seq in data.sequences])
    real, pos = make_split(data, rounds=rounds), make_split(positions, rounds=rounds)
    assert len(real) == len(pos) > 0 and real.dropped_users == pos.dropped_users
    for user, where in zip(real.users, pos.users, strict=True):
        n = len(user.items)
        assert len(where.history) >= 2
        stages = [where.target(stage) for stage in range(rounds + 1)]
        assert stages == list(range(n - rounds, n + 1))
        assert min(stages) > where.history.max()
        for stage in range(rounds + 1):
            assert where.window(stage).tolist() == list(range(1, stages[stage]))
        # history + validation target + round targets is the whole sequence, in order
        pieces = [*user.history.tolist(), *[user.target(s) for s in range(rounds + 1)]]
        assert pieces == user.items.tolist()


LENGTHS = [3, 4, 5, 6, 7, 2, 1]


@pytest.mark.parametrize(
    ("rounds", "min_history", "kept", "history_interactions"),
    [
        (1, 2, [4, 5, 6, 7], 2 + 3 + 4 + 5),
        (2, 2, [5, 6, 7], 2 + 3 + 4),
        (3, 2, [6, 7], 2 + 3),
        (1, 1, [3, 4, 5, 6, 7], 1 + 2 + 3 + 4 + 5),
        (2, 4, [7], 4),
    ],
)
def test_split_drops_short_users(rounds, min_history, kept, history_interactions):
    data = _seqdata([list(range(1, n + 1)) for n in LENGTHS])
    split = make_split(data, rounds=rounds, min_history=min_history)
    assert [len(u.items) for u in split.users] == kept
    assert [u.partition for u in split.users] == list(range(len(kept)))
    assert split.dropped_users == len(LENGTHS) - len(kept)
    assert split.num_items == 1000 and split.rounds == rounds
    assert split.sizes() == {
        "users": len(kept),
        "dropped_users": len(LENGTHS) - len(kept),
        "history_interactions": history_interactions,
        "validation_targets": len(kept),
        "round_targets": len(kept) * rounds,
    }


@pytest.mark.parametrize(("rounds", "min_history"), [(0, 2), (-1, 2), (1, 0)])
def test_split_bad_settings(rounds, min_history):
    with pytest.raises(ConfigError):
        make_split(_seqdata([list(range(1, 20))]), rounds=rounds, min_history=min_history)


def test_split_all_too_short():
    with pytest.raises(ConfigError, match=r"toy: .*\b6 items\b.*longest sequence: 5"):
        make_split(_seqdata([[1, 2, 3], [1, 2, 3, 4, 5]]), rounds=3)


def test_pad_left():
    seqs = [
        np.array([1, 2, 3, 4, 5]),
        np.array([7]),
        np.array([], dtype=np.int64),
        np.array([8, 9]),
    ]
    batch = pad_left(seqs, 3)
    assert batch.dtype == np.int64
    assert batch.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0], [0, 8, 9]]
    assert pad_left(seqs, 5).tolist() == [
        [1, 2, 3, 4, 5],
        [0, 0, 0, 0, 7],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 8, 9],
    ]
    assert pad_left(seqs, 0).shape == (4, 0)
    assert pad_left([], 4).shape == (0, 4)


# --- negatives -------------------------------------------------------------------------------


def _check_negatives(negatives, sequences, num_items, count):
    assert negatives.dtype == np.int64
    assert negatives.shape == (len(sequences), count)
    for row, seq in zip(negatives, sequences, strict=True):
        assert len(set(row.tolist())) == count
        assert row.min() >= 1 and row.max() <= num_items
        assert not set(row.tolist()) & set(np.asarray(seq).tolist())


class _RecordingRng:
    """A Generator that notes which of its methods were called."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)
        self.calls: set[str] = set()

    def __getattr__(self, name):
        self.calls.add(name)
        return getattr(self._rng, name)


def test_negatives_rejection_path_large_catalogue():
    rng = np.random.default_rng(0)
    num_items, count = 5000, 100
    sequences = [rng.integers(1, num_items + 1, size=n) for n in (1, 50, 400, 2000)]
    recording = _RecordingRng(1)
    negatives = sample_negatives(sequences, num_items, count, recording)
    _check_negatives(negatives, sequences, num_items, count)
    assert recording.calls == {"integers"}


@pytest.mark.parametrize(
    ("seen", "count", "method"),
    [(20, 6, "choice"), (20, 10, "choice"), (10, 10, "integers")],
)
def test_negatives_small_catalogue(seen, count, method):
    # 30 items; free = 30 - seen. free < 2 * count draws from the explicit complement (choice),
    # free == 2 * count still rejection-samples (integers) with a third of the catalogue seen.
    num_items = 30
    seq = np.array([*range(1, seen + 1), 3, 3, 1])  # repeats must not count twice
    unseen = set(range(seen + 1, num_items + 1))
    rng = _RecordingRng(5)
    picked = set()
    for _ in range(40):
        negatives = sample_negatives([seq, seq], num_items, count, rng)
        _check_negatives(negatives, [seq, seq], num_items, count)
        picked.update(negatives.ravel().tolist())
    assert picked == unseen  # every unseen item turns up, and nothing else
    assert rng.calls == {method}
    if count == len(unseen):
        assert set(negatives[0].tolist()) == unseen


def test_negatives_reproducible_by_seed():
    sequences = [np.arange(1, 40), np.array([5, 6]), np.arange(100, 900)]

    def draw(seed):
        return sample_negatives(sequences, 1000, 100, np.random.default_rng(seed))

    np.testing.assert_array_equal(draw(11), draw(11))
    assert not np.array_equal(draw(11), draw(12))


def test_negatives_too_few_unseen():
    sequences = [np.arange(1, 5), np.arange(1, 96)]  # user 1 has seen 95 of 100 items
    with pytest.raises(DataError, match=r"user 1 has only 5 items"):
        sample_negatives(sequences, 100, 6, np.random.default_rng(0))


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_interactions_deterministic_per_seed():
    first, again = synthetic_interactions(seed=4), synthetic_interactions(seed=4)
    pd.testing.assert_frame_equal(first, again)
    other = synthetic_interactions(seed=5)
    assert len(first) != len(other) or not first.equals(other)


def test_synthetic_interactions_ranges():
    frame = synthetic_interactions(num_users=60, num_items=50, min_length=3, max_length=5, seed=1)
    assert frame["item"].between(1, 50).all()
    assert sorted(frame["user"].unique().tolist()) == list(range(1, 61))
    lengths = frame.groupby("user").size()
    assert set(lengths.tolist()) == {3, 4, 5}
    for _, group in frame.groupby("user"):
        assert group["timestamp"].tolist() == list(map(float, range(len(group))))


def _top_successor_shares(frame: pd.DataFrame) -> tuple[float, list[float]]:
    """Pooled share of transitions going to each item's most frequent successor, and the share
    per item with at least 20 transitions."""
    successors: dict[int, Counter] = defaultdict(Counter)
    for _, group in frame.groupby("user", sort=False):
        items = group["item"].tolist()
        for a, b in zip(items[:-1], items[1:], strict=True):
            successors[a][b] += 1
    top = [c.most_common(1)[0][1] for c in successors.values()]
    totals = [sum(c.values()) for c in successors.values()]
    per_item = [t / n for t, n in zip(top, totals, strict=True) if n >= 20]
    return sum(top) / sum(totals), per_item


@pytest.mark.parametrize("seed", [0, 1])
def test_synthetic_has_markov_structure(seed):
    pooled, per_item = _top_successor_shares(synthetic_interactions(seed=seed))
    assert pooled > 0.6  # far above 1/120
    assert len(per_item) > 100 and min(per_item) > 0.4
    # control: without the ring step the same statistic is small
    noise, _ = _top_successor_shares(synthetic_interactions(seed=seed, p_next=0.0, p_noise=1.0))
    assert noise < 0.25


def test_synthetic_dataset_matches_interactions():
    frame = synthetic_interactions(seed=2)
    data = synthetic_dataset(seed=2)
    assert data.name == "synthetic"
    assert data.num_users == 200 and data.num_interactions == len(frame)
    assert data.raw_user_ids.tolist() == list(range(1, 201))
    for user, seq in zip(data.raw_user_ids, data.sequences, strict=True):
        assert 10 <= len(seq) <= 40
        assert seq.min() >= 1 and seq.max() <= data.num_items <= 120
        assert (
            data.raw_item_ids[seq - 1].tolist() == frame.loc[frame["user"] == user, "item"].tolist()
        )
    again = synthetic_dataset(seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(data.sequences, again.sequences, strict=True))
    other = synthetic_dataset(seed=3)
    assert [s.tolist() for s in data.sequences] != [s.tolist() for s in other.sequences]


# --- command line ----------------------------------------------------------------------------


def test_cli_data_on_a_file(tmp_path, capsys):
    rows = [(1, 10 + k, 5, 100 + k) for k in range(6)] + [(2, 10, 5, 1), (2, 11, 5, 2)]
    path = _write(tmp_path, "u.data", "".join("\t".join(map(str, r)) + "\n" for r in rows))
    assert main(["data", "--dataset", str(path), "--rounds", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["users"], report["items"], report["interactions"]) == (2, 6, 8)
    assert report["sequence_length"] == {"mean": 4.0, "min": 2, "max": 6}
    # user 1 has 6 items: history 6 - 2 - 1 = 3; user 2 (2 items) is dropped
    assert report["split"] == {
        "users": 1,
        "dropped_users": 1,
        "history_interactions": 3,
        "validation_targets": 1,
        "round_targets": 2,
    }


def test_cli_unknown_dataset(capsys):
    assert main(["data", "--dataset", "no-such-set"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error" in captured.err and "'no-such-set'" in captured.err


def test_cli_malformed_file_is_reported(tmp_path, capsys):
    path = _write(tmp_path, "u.data", "1\t10\t5\t100\n1\t11\t5\n")
    assert main(["data", "--dataset", str(path)]) == 2
    err = capsys.readouterr().err
    assert "u.data, line 2:" in err


# --- real MovieLens-100K ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k_dir() -> str:
    root = os.environ.get(DATA_DIR_ENV)
    if not root:
        pytest.skip(f"{DATA_DIR_ENV} is not set")
    if not (Path(root) / "ml-100k" / "u.data").is_file():
        pytest.skip(f"{DATA_DIR_ENV} holds no ml-100k/u.data (not downloading in tests)")
    return root


@pytest.fixture(scope="module")
def ml100k(ml100k_dir) -> SequenceData:
    return load_dataset("ml-100k", ml100k_dir)


def test_ml100k_counts_and_time_order(ml100k, ml100k_dir):
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_interactions) == (943, 1682, 100_000)
    # parse u.data independently of the library's readers
    raw: dict[int, list[tuple[int, int]]] = defaultdict(list)
    stamps: dict[tuple[int, int], int] = {}
    with open(Path(ml100k_dir) / "ml-100k" / "u.data") as handle:
        for line in handle:
            user, item, _rating, stamp = map(int, line.split("\t"))
            raw[user].append((stamp, item))
            stamps[user, item] = stamp
    assert ml100k.raw_user_ids.tolist() == list(range(1, 944))
    assert ml100k.raw_item_ids.tolist() == list(range(1, 1683))
    for user, seq in zip(ml100k.raw_user_ids, ml100k.sequences, strict=True):
        times = [stamps[int(user), int(item)] for item in ml100k.raw_item_ids[seq - 1]]
        assert times == sorted(times)
    for user in (1, 943):
        expected = [item for _, item in sorted(raw[user], key=lambda pair: pair[0])]
        seq = ml100k.sequences[user - 1]
        assert ml100k.raw_item_ids[seq - 1].tolist() == expected


def test_ml100k_leave_one_out_keeps_everyone(ml100k):
    split = make_split(ml100k, rounds=1)
    assert len(split) == 943 and split.dropped_users == 0
    assert split.sizes()["history_interactions"] == 100_000 - 2 * 943


def test_ml100k_cli_json(ml100k_dir, capsys):
    assert main(["data", "--dataset", "ml-100k", "--data-dir", ml100k_dir, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report, dict)
    assert (report["users"], report["items"], report["interactions"]) == (943, 1682, 100_000)
