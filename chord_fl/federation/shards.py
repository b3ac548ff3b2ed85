"""One fleet served by several simulations, one after another, each with a share of the users.

Flower's simulation engine pays, per message, for every SuperNode it holds (its link state scans
each node's queue against every stored message), so one simulation of 30,000 SuperNodes costs
far more per device than several of 5,000. Shard `I/K` holds users I, I+K, I+2K, ...: its
SuperNode of partition p is user I + p*K. Everything else (tiers, budgets, negatives, the cloud's
models) comes from the whole fleet, so a device's codes and metrics are the same whichever shard
serves it. `merge_shards` then writes one run directory, as if one simulation had served all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chord_fl.errors import ConfigError
from chord_fl.federation.runlog import ROUND_COLUMNS, RunLog, iter_csv

WHOLE = (0, 1)
SUMMED = ("wall_s", "rounds_wall_s")  # shards run one after another: their times add up


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/K"` -> (I, K), 0 <= I < K; `""` is the whole fleet, (0, 1)."""
    if not text:
        return WHOLE
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard must be 'I/K' (e.g. '0/4'), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"shard {text!r}: need 0 <= I < K")
    return index, count


def shard_users(shard: tuple[int, int], devices: int) -> range:
    """The users a shard serves, in the order of its SuperNodes' partitions."""
    index, count = shard
    return range(index, devices, count)


def shard_name(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]}-of-{shard[1]}"


def merge_shards(shard_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Write `out`'s config, ledger, clients, rounds and summary from finished shard runs.

    The shards must be one run's: the same settings but `shard`, every index from 0 to K-1
    once, each finished. A round's wall time is the sum over shards (they ran in turn), its
    memory the largest."""
    dirs = [Path(d) for d in shard_dirs]
    configs = [_read_json(d / "config.json") for d in dirs]
    summaries = [_read_json(d / "summary.json") for d in dirs]
    _check_one_run(dirs, configs, summaries)
    log = RunLog(out, fresh=True)
    log.write_config({**configs[0], "shard": "", "shards": len(dirs)})
    for d in dirs:
        log.append_ledger(iter_csv(d / "ledger.csv"))
        log.append_clients(iter_csv(d / "clients.csv"))
    for row in _merged_rounds(dirs):
        log.append_round(row)
    log.meta = {key: summaries[0][key] for key in ("strategy", "dataset", "backbone", "master")}
    log.meta["devices"] = sum(s["devices"] for s in summaries)
    return log.write_summary({key: round(sum(s[key] for s in summaries), 2) for key in SUMMED})


def _check_one_run(dirs: list[Path], configs: list[dict], summaries: list[dict]) -> None:
    shards = [parse_shard(str(c.get("shard", ""))) for c in configs]
    count = shards[0][1]
    if sorted(shards) != [(i, count) for i in range(count)]:
        found = ", ".join(f"{i}/{k}" for i, k in shards)
        raise ConfigError(f"shards to merge must be 0/K .. K-1/K, once each; got {found}")
    where = {"shard", "run-name", "output-dir", "machine"}
    settings = [{k: v for k, v in c.items() if k not in where} for c in configs]
    first = settings[0]
    for d, own in zip(dirs[1:], settings[1:], strict=True):
        changed = sorted(k for k in own.keys() | first.keys() if own.get(k) != first.get(k))
        if changed:
            raise ConfigError(f"{d} is another run than {dirs[0]}: settings {changed} differ")
    for d, summary in zip(dirs, summaries, strict=True):
        if "wall_s" not in summary:
            raise ConfigError(f"{d} did not finish: its summary has no wall_s")


def _merged_rounds(dirs: list[Path]) -> list[dict[str, Any]]:
    merged: dict[int, dict[str, float]] = {}
    for d in dirs:
        for row in iter_csv(d / "rounds.csv"):
            entry = merged.setdefault(int(row["round"]), dict.fromkeys(ROUND_COLUMNS[1:], 0.0))
            entry["wall_s"] += float(row["wall_s"] or 0)
            for key in ROUND_COLUMNS[2:]:
                entry[key] = max(entry[key], float(row[key] or 0))
    return [
        {"round": number, **{key: round(value, 2) for key, value in entry.items()}}
        for number, entry in sorted(merged.items())
    ]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"cannot merge shards: {path} is missing")
    return json.loads(path.read_text())
