"""Benchmark rows as JSON lines (appended one at a time, so a long run loses nothing), and what
the benchmarks share: their common options and paired differences by device."""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch

from chord_fl.cli_options import add_device_option
from chord_fl.cloud import tier_budgets
from chord_fl.data import RoundSplit
from chord_fl.experiment import Setup, load_split, prepare
from chord_fl.hypernet.serving import decide_budgets, selection_devices
from chord_fl.hypernet.tiered import TieredHyperNet
from chord_fl.hypernet.training import HyperTrainConfig, train_hypernet
from chord_fl.methods import CHORD_VARIANTS, hypernet_importance
from chord_fl.metrics import mean_and_standard_error
from chord_fl.quant.channels import ChannelMap
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.tiers import DEFAULT_FLEET, Fleet


def _open(path: Path, mode: str):
    """A results file as text; `.gz` files are gzip streams (rows that carry a per-device array
    for thousands of devices: appending adds a gzip member, and reading joins the members)."""
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, mode + "t", encoding="utf-8")


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with _open(path, "r") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def benchmark_parser(doc: str, results: str) -> argparse.ArgumentParser:
    """The options every per-setting benchmark shares; `doc` is the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    add_device_option(parser)
    parser.add_argument("--results", default=results, help="JSON-lines file rows are added to")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def paired(
    minuend: dict[str, np.ndarray], subtrahend: dict[str, np.ndarray]
) -> dict[str, list[float]]:
    """Per protocol, the mean and standard error over devices of per-device NDCG@10 differences."""
    return {
        protocol: list(mean_and_standard_error(minuend[protocol] - subtrahend[protocol]))
        for protocol in minuend
    }


def difference_text(per_device: np.ndarray) -> str:
    """Mean ± standard error (z) of per-device differences, as every paired table prints them."""
    mean, error = mean_and_standard_error(per_device)
    if not error:
        return f"{mean:+.4f}"
    return f"{mean:+.4f} ± {error:.4f} ({mean / error:+.1f})"


def paired_text(differences: dict[str, list[float]]) -> str:
    return ", ".join(f"{p} {m:+.4f} +- {e:.4f}" for p, (m, e) in differences.items())


def prepared_backbone(args: argparse.Namespace) -> tuple[RoundSplit, PreparedModel]:
    """The one-round split and the frozen backbone prepared under `--code-bits` and `--scales`
    (`chord_fl.cli.add_quantizer_options`), from `--checkpoint` or pretrain's default."""
    setup = Setup(
        args.dataset,
        args.backbone,
        args.data_dir or None,
        rounds=1,
        checkpoint=args.checkpoint,
        code_bits=tuple(args.code_bits),
        scales=args.scales,
    )
    split = load_split(setup)
    return split, prepare(setup, split, device=args.device)


def relaxation_networks(
    prepared: PreparedModel,
    split: RoundSplit,
    seed: int,
    exponents: tuple[float, ...],
    device: str = "auto",
) -> dict[str, TieredHyperNet]:
    """The relaxation recipe's networks: untrained (`init-relax`) and trained with the default
    settings (`chord-relax`), each from the exponent validation chooses among `exponents`."""
    (recipe,) = CHORD_VARIANTS["chord-relax"].recipes
    out = {}
    for epochs, label in ((0, "init-relax"), (HyperTrainConfig.epochs, "chord-relax")):
        torch.manual_seed(seed)
        config = HyperTrainConfig(
            epochs=epochs, seed=seed, objective=recipe.objective, exponents=exponents
        )
        net, fit = train_hypernet(
            prepared, split, DEFAULT_FLEET, recipe.network, config, device=device
        )
        print(f"{label}: exponent {float(net.exponent):g}, kept epoch {fit.best_epoch}", flush=True)
        out[label] = net
    return out


def importances_at(
    networks: dict[str, TieredHyperNet], profiles: np.ndarray, budgets: np.ndarray
) -> dict[str, np.ndarray]:
    """(D, C) importance of each of `networks` for devices with these profiles and budgets."""
    return {label: hypernet_importance(net, profiles, budgets) for label, net in networks.items()}


def budget_of(bits: float, channels: ChannelMap) -> int:
    """The all-in byte budget of `bits` average bits per weight."""
    return int(tier_budgets(Fleet.at_bits(bits), channels)[0])


def at_budgets(
    networks: dict[str, TieredHyperNet],
    sweep: list[float],
    prepared: PreparedModel,
    split,
    fleet: Fleet,
    config: HyperTrainConfig,
) -> dict[str, TieredHyperNet]:
    """`networks` with a decision of their own at each budget of the sweep (in bits) between two
    tiers that chose differently (`decide_budgets`), printed."""
    budgets = {budget_of(bits, prepared.channels): bits for bits in sweep}
    asked = list(budgets)
    if not any(net.disputed(np.array(asked)).any() for net in networks.values()):
        return networks
    _, decision = selection_devices(prepared, split, fleet, config)  # once for every network
    out = {}
    for label, net in networks.items():
        out[label], evidence = decide_budgets(net, asked, prepared, decision, config)
        for budget, by_protocol in evidence.items():
            chosen = out[label].decided[budget]
            differences = ", ".join(
                f"{protocol} {mean:+.4f} ± {error:.4f}"
                for protocol, (mean, error) in by_protocol.items()
            )
            print(
                f"  {label} at {budgets[budget]:g} bits: trained minus start on the decision users "
                f"{differences}: {'trained' if chosen else 'start'} served",
                flush=True,
            )
    return out
