"""The `chord-fl` command: `data` describes a data set, `pretrain` trains a backbone in the cloud,
`hypernet` trains CHORD's hypernetworks on the frozen backbone."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from chord_fl.checkpoint import hypernet_cache_path, hypernet_settings, save_hypernet
from chord_fl.cli_options import add_device_option, add_quantizer_options, add_selection_options
from chord_fl.cloud import tier_budgets
from chord_fl.data import load_dataset, make_split
from chord_fl.data.sources import DATA_DIR_ENV, DATASETS, FORMATS
from chord_fl.errors import ChordError, ConfigError
from chord_fl.evaluation import PROTOCOLS
from chord_fl.experiment import INITS, Setup, evaluate_method, load_split, prepare
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.training import HyperTrainConfig, train_best
from chord_fl.machine import torch_device
from chord_fl.methods import CHORD_VARIANTS, Cloud
from chord_fl.metrics import METRICS
from chord_fl.models import BACKBONES, LOSSES
from chord_fl.pretrain import BASELINES, pretrain, with_data_length
from chord_fl.tiers import DEFAULT_FLEET, assign_tiers, load_fleet
from chord_fl.train import CE_DTYPES, SCHEDULES, TrainConfig, default_training, evaluation_negatives


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="ml-100k",
        help=f"one of {', '.join(DATASETS)}, or a path to a file (default: ml-100k)",
    )
    parser.add_argument(
        "--data-dir", help=f"where data sets live (default: ${DATA_DIR_ENV}, then a user cache)"
    )
    parser.add_argument("--format", choices=FORMATS, help="file format, for a path to a file")
    parser.add_argument("--user-min", type=int, help="drop users with fewer items (k-core)")
    parser.add_argument("--item-min", type=int, help="drop items seen fewer times (k-core)")
    parser.add_argument("--rounds", type=int, default=1, help="evaluation rounds R (default: 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


TRAINING_CHOICES = {
    "loss": LOSSES,
    "ce_dtype": tuple(CE_DTYPES),
    "schedule": SCHEDULES,
    "select_metric": METRICS,
    "select_protocol": PROTOCOLS,
}
TRAINING_FLAGS = {"num_negatives": "--negatives"}  # the name every command uses


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field; unset ones take the backbone's default training
    (`chord_fl.train.default_training`)."""
    for field in dataclasses.fields(TrainConfig):
        if isinstance(field.default, bool):
            flag = "--no-" + field.name.replace("_", "-")
            parser.add_argument(flag, dest=field.name, action="store_const", const=False)
            continue
        flag = TRAINING_FLAGS.get(field.name, "--" + field.name.replace("_", "-"))
        parser.add_argument(
            flag,
            dest=field.name,
            type=type(field.default),
            choices=TRAINING_CHOICES.get(field.name),
            help=f"default for SASRec: {field.default}",
        )


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"format": args.format, "user_min": args.user_min, "item_min": args.item_min}


def parse_literal(text: str) -> Any:
    """'3' -> 3, '0.2' -> 0.2, 'true' -> True, anything else stays text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


PAIR = re.compile(r"""\s*([^\s=]+)=('[^']*'|"[^"]*"|\S+)\s*""")


def parse_pairs(pairs: list[str], what: str = "options") -> dict[str, Any]:
    """`key=value` pairs, several to a string if need be, as `flwr run --run-config` takes them:
    a quoted value is text (and may hold spaces, e.g. inline tiers), a bare one a number, a
    boolean or text. The one KEY=VALUE parser of every command."""
    values = {}
    for pair in pairs:
        position = 0
        while position < len(pair.rstrip()):
            match = PAIR.match(pair, position)
            if match is None:
                raise ConfigError(f"expected KEY=VALUE in {what}, got {pair[position:]!r}")
            key, text = match.groups()
            quoted = text[0] in "'\"" and text[-1] == text[0] and len(text) >= 2
            values[key] = text[1:-1] if quoted else parse_literal(text)
            position = match.end()
    return values


def run_data(args: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(args.dataset, args.data_dir, **_data_options(args))
    split = make_split(data, args.rounds)
    lengths = [len(seq) for seq in data.sequences]
    return {
        "dataset": args.dataset,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": data.num_interactions,
        "before_filter": data.stats["before_filter"],
        "filters": {"user_min": data.stats["user_min"], "item_min": data.stats["item_min"]},
        "sequence_length": {
            "mean": round(sum(lengths) / len(lengths), 2),
            "min": min(lengths),
            "max": max(lengths),
        },
        # What a SASRec trained on this split takes without --max-len (`with_data_length`).
        "default_max_len": with_data_length("sasrec", split.histories(), {})["max_len"],
        "rounds": args.rounds,
        "split": split.sizes(),
    }


def run_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    train = default_training(
        args.backbone, **{name: value for name, value in given.items() if value is not None}
    )
    backbone_options = {
        key.replace("-", "_"): value for key, value in parse_pairs(args.option, "--option").items()
    }
    for key in ("hidden", "max_len", "dropout", "attention_dropout"):
        if getattr(args, key) is not None:
            backbone_options[key] = getattr(args, key)
    return pretrain(
        args.dataset,
        args.backbone,
        args.data_dir,
        args.rounds,
        train,
        backbone_options,
        args.out,
        _data_options(args),
        progress=not args.no_progress,
        device=args.device,
    )


def run_hypernet(args: argparse.Namespace) -> dict[str, Any]:
    device = str(torch_device(args.device))  # a GPU asked for where there is none: before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = Setup(
        args.dataset,
        args.backbone,
        args.data_dir,
        args.rounds,
        args.init,
        args.seed,
        args.checkpoint,
        **_data_options(args),
        code_bits=tuple(args.code_bits),
        scales=args.scales,
    )
    fleet = load_fleet(args.tiers) if args.tiers else DEFAULT_FLEET
    split = load_split(setup)
    prepared = prepare(setup, split, not args.no_progress, args.device)
    recipes = CHORD_VARIANTS[args.variant].recipes
    config = HyperTrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        select_margin=args.select_margin,
        tier_guard=not args.no_tier_guard,
        wider_than_losses=args.wider_than_losses,
        sensitivity_temperature=args.sensitivity_temperature,
        exponents=tuple(args.exponents),
    )
    net, result, served = train_best(
        prepared, split, fleet, recipes, config, not args.no_progress, device=args.device
    )
    identity = setup.backbone_identity(prepared.frozen)
    settings = hypernet_settings(identity, setup.quantizer, recipes, fleet, config)
    stem = f"{Path(setup.checkpoint_path).stem}-{args.variant}"
    out = Path(args.out or hypernet_cache_path(args.checkpoint_dir, stem, settings))
    budgets = tier_budgets(fleet, prepared.channels)[assign_tiers(fleet, len(split), args.seed)]
    negatives = evaluation_negatives(split, args.negatives, args.seed)
    cloud = Cloud(prepared, {args.variant: net})
    windows = split.windows(1)
    profiles = encode_profiles(prepared.frozen, windows)
    test, _ = evaluate_method(
        args.variant, cloud, windows, split.targets(1), profiles, budgets, negatives, args.seed
    )
    report = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "variant": args.variant,
        "init": args.init,
        "objectives": [recipe.objective for recipe in served],  # of the start, the trained one
        "best_epoch": result.best_epoch,
        "trained_tiers": list(net.trained_tiers(fleet.names)),
        "importance_exponent": float(net.exponent),
        "validation_ndcg@10": result.best_score,
        "train_seconds": round(result.seconds, 2),
        "train_device": device,
        "history": result.history,
        "test_round_1": test,
        "checkpoint": str(out),
        "settings": settings,
    }
    save_hypernet(out, net, report)
    return report


def _print_data(report: dict[str, Any]) -> None:
    before = report["before_filter"]
    print(f"{report['dataset']}")
    print(
        f"  before filtering: {before['users']} users, {before['items']} items, "
        f"{before['interactions']} interactions"
    )
    print(
        f"  after filtering:  {report['users']} users, {report['items']} items, "
        f"{report['interactions']} interactions ({report['filters']})"
    )
    lengths = report["sequence_length"]
    print(
        f"  sequence length:  mean {lengths['mean']}, min {lengths['min']}, max {lengths['max']}; "
        f"a backbone's input length by default {report['default_max_len']}"
    )
    split = report["split"]
    print(
        f"  split (R={report['rounds']}): {split['users']} users kept, {split['dropped_users']} "
        f"dropped; history {split['history_interactions']} interactions, "
        f"{split['validation_targets']} validation and {split['round_targets']} round targets"
    )


def _print_pretrain(report: dict[str, Any]) -> None:
    length = f", input length {report['max_len']}" if report["max_len"] else ""
    print(
        f"{report['backbone']} on {report['dataset']}: {report['users']} users, "
        f"{report['items']} items{length}; best epoch {report['best_epoch']} of "
        f"{report['epochs_run']}, {report['train_seconds']} s"
    )
    for part in ("validation", "test"):
        for protocol, metrics in report[part].items():
            values = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            print(f"  {part:<10} {protocol:<7} {values}")
    if "checkpoint" in report:
        print(f"  checkpoint: {report['checkpoint']}")


def _print_hypernet(report: dict[str, Any]) -> None:
    print(
        f"{report['variant']} hypernetworks for {report['backbone']} on {report['dataset']} "
        f"({report['init']} weights): best epoch {report['best_epoch']} (serving tiers: "
        f"{', '.join(report['trained_tiers']) or 'none'}), validation NDCG@10 "
        f"{report['validation_ndcg@10']:.4f}, {report['train_seconds']} s"
    )
    test = report["test_round_1"]
    print(
        f"  round-1 targets at the fleet's budgets: {test['avg_bits']:.2f} bits on average, "
        f"{test['model_bytes'] / 1024:.1f} KiB per model"
    )
    for protocol in ("full", "sampled"):
        values = "  ".join(f"{name} {value:.4f}" for name, value in test[protocol].items())
        print(f"  {protocol:<7} {values}")
    print(f"  checkpoint: {report['checkpoint']}")


Extension = Callable[[argparse._SubParsersAction], None]


def build_parser(
    extensions: tuple[Extension, ...] = (), description: str | None = None
) -> argparse.ArgumentParser:
    """The library's commands, plus those each extension adds (the Flower commands live in
    `simulations.cli`, so this package never imports Flower)."""
    parser = argparse.ArgumentParser(prog="chord-fl", description=description or __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for extend in extensions:
        extend(commands)

    data = commands.add_parser("data", help="load a data set and print its statistics")
    _add_data_options(data)
    data.set_defaults(run=run_data, show=_print_data)

    train = commands.add_parser("pretrain", help="train a backbone on the cloud history split")
    _add_data_options(train)
    train.add_argument("--backbone", choices=[*BACKBONES, *BASELINES], default="sasrec")
    _add_training_options(train)
    train.add_argument("--hidden", type=int, help="backbone width")
    train.add_argument(
        "--max-len",
        type=int,
        help="longest input sequence (default: 99%% of the training histories fit, at most 200)",
    )
    train.add_argument("--dropout", type=float)
    train.add_argument("--attention-dropout", type=float, help="SASRec: on attention weights")
    train.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other backbone setting, e.g. blocks=2 or window=5",
    )
    train.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_device_option(train)
    train.add_argument("--out", help="checkpoint path (default: checkpoints/NAME.pt)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(run=run_pretrain, show=_print_pretrain)

    hyper = commands.add_parser("hypernet", help="train CHORD's hypernetworks (cloud only)")
    _add_data_options(hyper)
    hyper.add_argument("--backbone", choices=list(BACKBONES), default="sasrec")
    hyper.add_argument("--variant", choices=list(CHORD_VARIANTS), default="chord")
    hyper.add_argument("--init", choices=INITS, default="pretrained")
    hyper.add_argument(
        "--checkpoint", help="frozen backbone (default: pretrain's; trained if absent)"
    )
    hyper.add_argument("--tiers", help="device tiers TOML (default: the built-in fleet)")
    add_quantizer_options(hyper)
    hyper.add_argument("--epochs", type=int, default=HyperTrainConfig().epochs)
    hyper.add_argument("--lr", type=float, default=HyperTrainConfig().lr)
    add_selection_options(hyper)
    hyper.add_argument("--seed", type=int, default=0)
    hyper.add_argument("--negatives", type=int, default=100, help="sampled-protocol negatives")
    hyper.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_device_option(hyper)
    hyper.add_argument(
        "--checkpoint-dir",
        default="checkpoints",
        help="where the cached hypernetworks go, named by a hash of their settings "
        "(the simulation finds them there when its settings match)",
    )
    hyper.add_argument("--out", help="hypernetwork checkpoint path (default: in --checkpoint-dir)")
    hyper.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    hyper.set_defaults(run=run_hypernet, show=_print_hypernet)
    return parser


def main(
    argv: list[str] | None = None,
    extensions: tuple[Extension, ...] = (),
    description: str | None = None,
) -> int:
    args = build_parser(extensions, description).parse_args(argv)
    try:
        report = args.run(args)
    except ChordError as exc:
        print(f"chord-fl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        args.show(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
