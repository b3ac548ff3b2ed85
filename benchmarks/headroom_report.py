"""The headroom benchmark's report: tables per setting and budget (paired by device, with the
share of the global-to-window gap each method closes) and the budget sweep figure, read from the
results file `benchmarks/headroom.py` writes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from results_file import difference_text

from chord_fl.evaluation import PROTOCOLS
from chord_fl.metrics import mean_and_standard_error
from chord_fl.quant.channels import CodeTable

ORDER = (
    "fp32",
    "uniform",
    "random",
    "global-target",
    "global",
    "global+refined",
    "init-relax",
    "chord-relax",
    "init-sens",
    "chord-sens",
    "init-sens-relax",
    "chord-sens-relax",
    "chord",
    "chord+refined",
    "window-fisher",
    "window",
    "oracle",
)


# What CHORD (and CHORD refined on the device) is compared with, paired, beside the table against
# global.
AGAINST = {
    "chord": (
        "init-relax",
        "init-sens",
        "global",
        "uniform",
        "fp32",
        "window-fisher",
        "window",
        "chord+refined",
        "global+refined",
    ),
    "chord+refined": ("chord", "global+refined", "global", "uniform", "fp32", "window", "oracle"),
    # Each recipe's served networks against the untrained starts: what training adds per recipe.
    "chord-relax": ("init-relax", "init-sens"),
    "chord-sens": ("init-sens",),
    "chord-sens-relax": ("init-sens-relax", "init-sens", "global", "uniform", "fp32"),
}

# The budget sweep figure: the deployable methods and the two ceilings (the tables have the rest).
SWEEP_METHODS = (
    "fp32",
    "uniform",
    "random",
    "global",
    "global+refined",
    "chord",
    "chord+refined",
    "window",
    "oracle",
)


def method_order(method: str) -> int:
    return ORDER.index(method) if method in ORDER else len(ORDER)


def _table_name(row: dict) -> str:
    bits = tuple(row.get("code_bits", CodeTable().bits))
    codes = "" if bits == CodeTable().bits else f" / codes {'-'.join(map(str, bits))} bits"
    ceiling, supervised = row.get("ceiling_temperature", 1), row.get("sensitivity_temperature", 1)
    sharpened = f" / window at T={ceiling:g}" if ceiling != 1 else ""
    sharpened += f" / supervised at T={supervised:g}" if supervised != 1 else ""
    scored_on = " / validation targets" if row.get("targets") == "validation" else ""
    return (
        codes
        + (" / shared scales" if row.get("scales") == "tensor" else "")
        + sharpened
        + scored_on
    )


def tables(rows: list[dict]) -> str:
    """Per setting and budget: each method's NDCG@10, its paired difference from global, and the
    share of the global-to-window gap it closes (both protocols)."""
    by_key: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = (row["dataset"], row["backbone"], _table_name(row), row["budget_bits"])
        by_key[key][row["method"]].append(row)
    out = []
    for (dataset, backbone, table, bits), methods in sorted(by_key.items()):
        out.append(f"\n{dataset} / {backbone}{table} / {bits:g} bits ({_seeds(methods)} seeds)\n")
        out.append(
            "| method | avg bits | NDCG@10 full | sampled | minus global, full: diff ± s.e. (z) "
            "| sampled | share of global-to-window gap closed, full / sampled |"
        )
        out.append("|---|---|---|---|---|---|---|")
        means = {m: _means(group) for m, group in methods.items()}
        for method in sorted(methods, key=method_order):
            group = methods[method]
            cells = [f"{np.mean([r['avg_bits'] for r in group]):.2f}"]
            cells += [f"{means[method][p]:.4f}" for p in ("full", "sampled")]
            cells += [_paired(group, methods.get("global"), p) for p in ("full", "sampled")]
            cells.append(_gap_share(means, methods, method))
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        for lead, comparators in AGAINST.items():
            if lead not in methods:
                continue
            setting = f"{dataset} / {backbone}{table} / {bits:g} bits"
            out.append(f"\n`{lead}` minus each comparator ({setting})\n")
            out.append("| comparator | full: diff ± s.e. (z) | sampled |")
            out.append("|---|---|---|")
            for other in comparators:
                if other in methods:
                    cells = [_paired(methods[lead], methods[other], p) for p in PROTOCOLS]
                    out.append(f"| {other} | " + " | ".join(cells) + " |")
            if "global" in methods and "window" in methods:
                # Above zero by two standard errors: the lead closes over half of the gap.
                cells = [_above_half_gap(methods[lead], methods, p) for p in PROTOCOLS]
                out.append("| the global-to-window gap's midpoint | " + " | ".join(cells) + " |")
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
    return difference_text(_per_device(group, protocol) - _per_device(reference, protocol))


def _real_gap(methods: dict[str, list[dict]], protocol: str) -> tuple[np.ndarray, float] | None:
    """Each device's `global` and window-ceiling mean, and the mean gap between them, where the
    gap is more than two paired standard errors from zero (None: "no gap")."""
    low, high = (_per_device(methods[m], protocol) for m in ("global", "window"))
    gap, error = mean_and_standard_error(high - low)
    if not error or abs(gap) < 2 * error:
        return None
    return (low + high) / 2, gap


def _above_half_gap(group: list[dict], methods: dict[str, list[dict]], protocol: str) -> str:
    """The group minus the gap's midpoint, paired by device, where the window ceiling is above
    `global` ("no gap" otherwise)."""
    real = _real_gap(methods, protocol)
    if real is None or real[1] < 0:
        return "no gap"
    return difference_text(_per_device(group, protocol) - real[0])


def _gap_share(
    means: dict[str, dict[str, float]], methods: dict[str, list[dict]], method: str
) -> str:
    """(method - global) / (window - global), where that gap is real: a gap within two paired
    standard errors of zero has no share to close ("no gap")."""
    if "global" not in means or "window" not in means:
        return "-"
    shares = []
    for protocol in ("full", "sampled"):
        real = _real_gap(methods, protocol)
        if real is None:
            shares.append("no gap")
            continue
        shares.append(f"{(means[method][protocol] - means['global'][protocol]) / real[1]:+.0%}")
    return " / ".join(shares)


def pareto_figure(rows: list[dict], dataset: str, backbone: str, out: Path) -> Path:
    """NDCG@10 (full, sampled) against the average bits each method used, a line per method,
    error bars the standard error over devices (seeds averaged per device), for the setting
    (code table, scales, temperatures) measured at the most budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simulations.style import method_colour, method_marker

    ours = [r for r in rows if r["dataset"] == dataset and r["backbone"] == backbone]
    budgets_by_setting: dict[str, set[float]] = defaultdict(set)
    for row in ours:
        budgets_by_setting[_table_name(row)].add(row["budget_bits"])
    if not budgets_by_setting:
        raise ValueError(f"no rows for {dataset} / {backbone} to plot")
    setting = max(sorted(budgets_by_setting), key=lambda name: len(budgets_by_setting[name]))
    chosen = [r for r in ours if _table_name(r) == setting and r["method"] in SWEEP_METHODS]
    by_method: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in chosen:
        by_method[row["method"]][row["budget_bits"]].append(row)
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for axis, protocol in zip(axes, ("full", "sampled"), strict=True):
        for method in sorted(by_method, key=method_order):
            budgets = sorted(by_method[method])
            bits = [np.mean([r["avg_bits"] for r in by_method[method][b]]) for b in budgets]
            stats = [
                mean_and_standard_error(_per_device(by_method[method][b], protocol))
                for b in budgets
            ]
            if method == "fp32":  # one point at 32 bits: drawn as a level line instead
                axis.axhline(stats[0][0], color=method_colour(method), ls=":", label="fp32")
                continue
            axis.errorbar(
                bits,
                [s[0] for s in stats],
                yerr=[s[1] or 0.0 for s in stats],
                color=method_colour(method),
                marker=method_marker(method),
                ms=5,
                capsize=2,
                label=method,
            )
        axis.set_xlabel("average bits per quantizable weight (what each method used)")
        axis.set_ylabel(f"NDCG@10, {protocol}")
        axis.set_title(f"{dataset} / {backbone}{setting}: {protocol} ranking", fontsize=9)
        axis.grid(alpha=0.3)
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
