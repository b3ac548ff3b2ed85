"""Headroom: where CHORD sits between the strongest non-personalised allocation and what a perfect
profile-to-sensitivity map could reach, on the same devices and budgets, paired by device.

Every method below issues codes through the same allocator at the same all-in budgets (uniform
and fp32 aside), and every device is scored on its own test target:

- oracle: the device's sensitivity to its actual test target (a ceiling no method can deploy);
- window: its expected sensitivity over the frozen model's predictive distribution for its real
  window (what a perfect map from the window to sensitivity could output: the window ceiling);
- chord-sens: hypernetworks trained by sensitivity supervision (log link, cloud-wide prior);
  init-sens: the same networks untrained (the prior, with the backbone's own item scores);
- chord: hypernetworks trained through the relaxed allocation (the earlier default);
  init: the same networks untrained (the backbone's own item scores, softplus);
- global: the mean expected sensitivity of training users' history windows, each normalised (the
  project's `global` strategy); global-target: the earlier estimate, the mean squared gradient
  of the same users' realised last history items;
- uniform (widest of 1..8 bits, per-channel or per-tensor scales), random, fp32.

Rows go to a JSON-lines file as they are measured; the tables are printed from it:

    python benchmarks/headroom.py --dataset ml-100k --backbone sasrec --bits 2.5 3
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from results_file import append_row, read_rows

from chord_fl.cloud import evaluate_codes, issue_codes, tier_budgets
from chord_fl.experiment import Setup, evaluate_method, load_backbone, load_split
from chord_fl.hypernet.networks import HyperNetConfig
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.supervision import SensitivitySet, sensitivity_set, training_windows
from chord_fl.hypernet.training import HyperTrainConfig, train_hypernet
from chord_fl.machine import machine_line
from chord_fl.methods import Cloud, hypernet_importance
from chord_fl.metrics import mean_and_standard_error
from chord_fl.quant.budget import coded_bytes
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import expected_sensitivity, global_sensitivity, target_sensitivity
from chord_fl.tiers import DEFAULT_FLEET, Fleet, Tier
from chord_fl.train import evaluation_negatives

CEILINGS = ("oracle", "window")
LEARNED = {  # name: (network, training objective); "init*" are the same networks untrained
    "chord": (HyperNetConfig(), "next-item"),
    "chord-sens": (HyperNetConfig(link="exp", prior=True), "sensitivity"),
}
ORDER = (
    "fp32",
    "uniform",
    "random",
    "global-target",
    "global",
    "init",
    "chord",
    "init-sens",
    "chord-sens",
    "window",
    "oracle",
)


def single_tier(bits: float) -> Fleet:
    return Fleet((Tier(f"{bits:g}-bit", 1.0, 1e6, 1e6, 1.0, 1.0, avg_bits=bits),))


def realised_target_sensitivity(frozen, channels, split, max_users: int = 1000) -> np.ndarray:
    """The earlier global estimate: mean squared gradient of users' realised last history item."""
    users = np.sort(np.random.default_rng([0, 0x676C6F62]).permutation(len(split))[:max_users])
    histories = [split.users[i].history for i in users]
    windows, targets = [h[:-1] for h in histories], np.array([h[-1] for h in histories])
    return target_sensitivity(frozen, channels, windows, targets).mean(axis=0)


def learned_importance(
    prepared: PreparedModel,
    split,
    profiles: np.ndarray,
    supervision: SensitivitySet,
    seed: int,
    args: argparse.Namespace,
) -> dict[str, np.ndarray]:
    """Importances of each learned method and of its untrained start, for one seed."""
    out = {}
    for name, (net_config, objective) in LEARNED.items():
        for epochs, label in ((0, name.replace("chord", "init")), (args.hypernet_epochs, name)):
            config = HyperTrainConfig(
                epochs=epochs,
                seed=seed,
                objective=objective,
                sensitivity_samples=args.samples,
            )
            start = time.perf_counter()
            net, fit = train_hypernet(
                prepared, split, DEFAULT_FLEET, net_config, config, supervision=supervision
            )
            out[label] = hypernet_importance(net, profiles)
            history = [(h["epoch"], round(h["validation"], 4)) for h in fit.history]
            print(
                f"  {label}: best epoch {fit.best_epoch}, validation {history} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return out


def run(args: argparse.Namespace, results: Path) -> None:
    setup = Setup(args.dataset, args.backbone, args.data_dir, rounds=1)
    split = load_split(setup)
    prepared = PreparedModel(load_backbone(setup, split))
    frozen, channels = prepared.frozen, prepared.channels
    users = np.sort(np.random.default_rng(0).permutation(len(split))[: args.eval_users])
    windows = [split.users[i].window(1) for i in users]
    targets = split.targets(1)[users]
    negatives = evaluation_negatives(split, 100, seed=0)[users]
    profiles = encode_profiles(frozen, windows)

    start = time.perf_counter()
    fixed = {
        "oracle": target_sensitivity(frozen, channels, windows, targets),
        "window": expected_sensitivity(frozen, channels, windows, args.samples, seed=1),
        "global": np.broadcast_to(
            global_sensitivity(frozen, channels, split, samples=args.samples),
            (len(users), channels.channels),
        ),
        "global-target": np.broadcast_to(
            realised_target_sensitivity(frozen, channels, split), (len(users), channels.channels)
        ),
    }
    # The supervision set of every seed's sensitivity-supervised training.
    pool = np.sort(np.random.default_rng(0).permutation(len(split))[:2000])
    windows_seen = training_windows(
        split.histories(), pool, HyperTrainConfig().sensitivity_positions
    )
    supervision = sensitivity_set(frozen, channels, windows_seen, args.samples, seed=0)
    print(f"sensitivities: {time.perf_counter() - start:.0f} s", flush=True)

    for seed in args.seeds:
        torch.manual_seed(seed)
        learned = learned_importance(prepared, split, profiles, supervision, seed, args)
        importances = {**fixed, **learned}
        for bits in args.bits:
            budgets = np.full(len(users), tier_budgets(single_tier(bits), channels)[0])
            for method in args.methods:
                if method in ("fp32", "uniform", "random"):
                    row, per_device = evaluate_method(
                        method,
                        Cloud(prepared),
                        windows,
                        targets,
                        profiles,
                        budgets,
                        negatives,
                        seed,
                    )
                else:
                    codes = issue_codes(prepared, importances[method], budgets)
                    per_device = evaluate_codes(prepared, windows, targets, codes, negatives)
                    bits_used = prepared.table.array[codes] * channels.elements()
                    row = {
                        "method": method,
                        "avg_bits": float(bits_used.sum(1).mean() / channels.weights),
                        "model_bytes": float(coded_bytes(channels, prepared.table, codes).mean()),
                    }
                row.update(
                    dataset=args.dataset,
                    backbone=args.backbone,
                    budget_bits=bits,
                    seed=seed,
                    users=len(users),
                    samples=args.samples,
                    hypernet_epochs=args.hypernet_epochs,
                    machine=machine_line(),
                )
                for protocol, metrics in per_device.items():
                    row[protocol] = {"ndcg@10": float(metrics["ndcg@10"].mean())}
                    row[f"{protocol}_per_device"] = metrics["ndcg@10"].round(6).tolist()
                append_row(results, row)
                print(
                    f"{args.dataset} {args.backbone} {bits:g} bits seed {seed} {method:<13} "
                    f"ndcg@10 full {row['full']['ndcg@10']:.4f} "
                    f"sampled {row['sampled']['ndcg@10']:.4f} ({row['avg_bits']:.2f} bits)",
                    flush=True,
                )


def tables(rows: list[dict]) -> str:
    """Per setting and budget: each method's NDCG@10, its paired difference from global, and the
    share of the global-to-window gap it closes (both protocols)."""
    by_key: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_key[(row["dataset"], row["backbone"], row["budget_bits"])][row["method"]].append(row)
    out = []
    for (dataset, backbone, bits), methods in sorted(by_key.items()):
        out.append(f"\n{dataset} / {backbone} / {bits:g} bits ({_seeds(methods)} seeds)\n")
        out.append(
            "| method | avg bits | NDCG@10 full | sampled | minus global, full: diff ± s.e. (z) "
            "| sampled | share of global-to-window gap closed, full / sampled |"
        )
        out.append("|---|---|---|---|---|---|---|")
        means = {m: _means(group) for m, group in methods.items()}
        for method in sorted(methods, key=lambda m: ORDER.index(m) if m in ORDER else 99):
            group = methods[method]
            cells = [f"{np.mean([r['avg_bits'] for r in group]):.2f}"]
            cells += [f"{means[method][p]:.4f}" for p in ("full", "sampled")]
            cells += [_paired(group, methods.get("global"), p) for p in ("full", "sampled")]
            cells.append(_gap_share(means, method))
            out.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _seeds(methods: dict[str, list[dict]]) -> int:
    return max(len(group) for group in methods.values())


def _means(group: list[dict]) -> dict[str, float]:
    return {p: float(np.mean([r[p]["ndcg@10"] for r in group])) for p in ("full", "sampled")}


def _per_device(group: list[dict], protocol: str) -> np.ndarray:
    """Each device's NDCG@10 averaged over the seeds measured."""
    return np.mean([r[f"{protocol}_per_device"] for r in group], axis=0)


def _paired(group: list[dict], reference: list[dict] | None, protocol: str) -> str:
    if not reference:
        return "-"
    mean, error = mean_and_standard_error(
        _per_device(group, protocol) - _per_device(reference, protocol)
    )
    if not error:
        return f"{mean:+.4f}"
    return f"{mean:+.4f} ± {error:.4f} ({mean / error:+.1f})"


def _gap_share(means: dict[str, dict[str, float]], method: str) -> str:
    if "global" not in means or "window" not in means:
        return "-"
    shares = []
    for protocol in ("full", "sampled"):
        gap = means["window"][protocol] - means["global"][protocol]
        shares.append(
            f"{(means[method][protocol] - means['global'][protocol]) / gap:+.0%}"
            if abs(gap) > 1e-9
            else "-"
        )
    return " / ".join(shares)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--bits", nargs="+", type=float, default=[2.5, 3.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--eval-users", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=16, help="targets per window (Fisher)")
    parser.add_argument("--hypernet-epochs", type=int, default=4)
    parser.add_argument("--data-dir")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--results", default="benchmarks/results/headroom.jsonl")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = Path(args.results)
    if not args.table_only:
        run(args, results)
    print(f"\nTest targets, paired by device ({results}):")
    print(tables(read_rows(results)))


if __name__ == "__main__":
    main()
