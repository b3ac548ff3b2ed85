"""Validation curves of hypernetwork training, per CHORD variant and seed: how stable training is,
and whether any epoch beats the untrained start (epoch 0), on validation targets only.

    python benchmarks/hypernet_curves.py --dataset ml-100k --backbone sasrec --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import torch

from chord_fl.cli_options import add_device_option, add_exponent_option
from chord_fl.experiment import Setup, load_backbone, load_split
from chord_fl.hypernet.supervision import sensitivity_set, training_windows
from chord_fl.hypernet.training import HyperTrainConfig, train_hypernet
from chord_fl.machine import on_device
from chord_fl.methods import CHORD_VARIANTS
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.tiers import DEFAULT_FLEET
from simulations.style import method_colour

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def curves(args: argparse.Namespace) -> list[dict]:
    setup = Setup(args.dataset, args.backbone, args.data_dir, rounds=1, checkpoint=args.checkpoint)
    split = load_split(setup)
    prepared = PreparedModel(load_backbone(setup, split, device=args.device))
    out = []
    recipes = {}
    for name in args.variants:
        (recipes[name],) = CHORD_VARIANTS[name].recipes  # one-recipe variants
    supervised = any(recipe.needs_supervision for recipe in recipes.values())
    cloud_frozen = on_device(prepared.frozen, args.device)
    for seed in args.seeds:
        supervision = None
        if supervised:
            # Every seed draws its own supervision windows, as training would.
            pool = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
            windows = training_windows(split.histories(), pool[:2000].numpy(), 2)
            supervision = sensitivity_set(
                cloud_frozen, prepared.channels, windows, args.samples, seed
            )
        for name in args.variants:
            recipe = recipes[name]
            config = HyperTrainConfig(
                epochs=args.epochs,
                lr=args.lr,
                seed=seed,
                objective=recipe.objective,
                patience=args.epochs,  # the whole curve, not early stopping
                sensitivity_samples=args.samples,
                exponents=tuple(args.exponents),
            )
            _, fit = train_hypernet(
                prepared,
                split,
                DEFAULT_FLEET,
                recipe.network,
                config,
                True,
                supervision,
                args.device,
            )
            row = {
                "variant": name,
                "seed": seed,
                "lr": args.lr,
                "history": fit.history,
                "seconds": fit.seconds,
            }
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def figure(rows: list[dict], title: str, path: Path) -> None:
    fig, axis = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for row in rows:
        epochs = [h["epoch"] for h in row["history"]]
        scores = [h["validation"] for h in row["history"]]
        first = row["seed"] == min(r["seed"] for r in rows if r["variant"] == row["variant"])
        axis.plot(
            epochs,
            scores,
            marker="o",
            ms=3,
            color=method_colour(row["variant"]),
            label=row["variant"] if first else None,
            alpha=0.85,
        )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch (0: the untrained start)")
    axis.set_ylabel("validation NDCG@10, full ranking\n(500 users drawn per seed)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--variants", nargs="+", default=["chord-relax", "chord-sens"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--lr", type=float, default=HyperTrainConfig.lr)
    add_exponent_option(parser)
    parser.add_argument("--data-dir")
    parser.add_argument("--checkpoint", help="the frozen backbone (default: pretrain's cache)")
    parser.add_argument("--threads", type=int)
    add_device_option(parser)
    parser.add_argument("--out", default="benchmarks/results/hypernet-curves")
    parser.add_argument("--plot-only", action="store_true", help="redraw from the saved curves")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stem = Path(args.out) / f"{args.dataset}-{args.backbone}"
    if args.plot_only:
        rows = json.loads(stem.with_suffix(".json").read_text())
    else:
        rows = curves(args)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    title = f"{args.dataset} / {args.backbone}: hypernetwork training, {len(args.seeds)} seeds"
    figure(rows, title, stem.with_suffix(".png"))
    print(f"figure: {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
