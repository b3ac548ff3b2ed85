"""Importance maps: what CHORD's hypernetworks consider important, per layer and channel, for a few
users of the default run (the `chord` strategy's cached networks, trained first if missing).

Each user's importances are divided by their mean (the allocator compares channels within a
device, so only relative values matter) and drawn on one log scale: the item table (items by
popularity, most popular on the left) above, every other tensor's channels below.

    python benchmarks/importance_maps.py --users 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.world import load_cloud, load_world
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.methods import hypernet_importance
from simulations.style import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def chosen_users(lengths: np.ndarray, count: int) -> np.ndarray:
    """Users spread over history length: the shortest, the longest and quantiles between."""
    order = np.argsort(lengths, kind="stable")
    return order[np.linspace(0, len(order) - 1, count).round().astype(int)]


def importance_maps(config: RunConfig, count: int, out: Path) -> Path:
    world = load_world(config, progress=True)
    cloud = load_cloud(world, "chord", config, progress=True)
    prepared = world.prepared
    histories = world.split.histories()
    users = chosen_users(np.array([len(h) for h in histories]), count)
    windows = [world.split.users[u].window(1) for u in users]
    profiles = encode_profiles(prepared.frozen, windows)
    importance = hypernet_importance(cloud.hypernets["chord"], profiles, world.budgets[users])
    relative = np.log10(importance / importance.mean(axis=1, keepdims=True))

    item_group = next(g for g in prepared.channels.groups if g.name == prepared.frozen.output_table)
    counts = np.bincount(np.concatenate(histories), minlength=item_group.channels)
    items = np.argsort(-counts, kind="stable")  # padding row (never seen) last
    other = [g for g in prepared.channels.groups if g is not item_group]
    panels = {
        f"{item_group.name}: one channel per item, by popularity": relative[:, item_group.codes][
            :, items
        ],
        "every other tensor: one channel per output row": np.concatenate(
            [relative[:, g.codes] for g in other], axis=1
        ),
    }
    low, high = np.percentile(relative, [1, 99])
    figure, axes = plt.subplots(2, 1, figsize=(13, 1.2 + 0.55 * count * 2), constrained_layout=True)
    labels = [f"user {u} ({len(histories[u])} items)" for u in users]
    for axis, (title, values) in zip(axes, panels.items(), strict=True):
        image = axis.imshow(
            values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=low, vmax=high
        )
        axis.set_yticks(range(count), labels, fontsize=8)
        axis.set_title(title, fontsize=10)
    starts = np.cumsum([0] + [g.channels for g in other])
    for start in starts[1:-1]:
        axes[1].axvline(start - 0.5, color="white", lw=0.8)
    axes[1].set_xticks((starts[:-1] + starts[1:]) / 2 - 0.5, [g.name for g in other], fontsize=6)
    axes[1].tick_params(axis="x", labelrotation=60)
    axes[0].set_xlabel("items, most popular first")
    figure.colorbar(image, ax=axes, label="log10 importance / device mean", shrink=0.8)
    figure.suptitle(
        f"CHORD importance per channel, {config.dataset} / {config.backbone}, default run"
    )
    rows = [
        {
            "user": int(u),
            "tensor": g.name,
            "channel": c,
            "log10_relative": float(relative[i, g.offset + c]),
        }
        for i, u in enumerate(users)
        for g in prepared.channels.groups
        for c in range(g.channels)
    ]
    return save_figure(figure, out, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--out", default="benchmarks/results/importance-maps.png")
    args = parser.parse_args()
    config = RunConfig(dataset=args.dataset, backbone=args.backbone, data_dir=args.data_dir)
    print(f"figure: {importance_maps(config, args.users, Path(args.out))}")


if __name__ == "__main__":
    main()
