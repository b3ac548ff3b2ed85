"""Command-line options that `chord-fl` and the benchmarks share."""

from __future__ import annotations

import argparse

from chord_fl.hypernet.training import HyperTrainConfig
from chord_fl.machine import DEVICES
from chord_fl.quant.channels import SCALES, CodeTable


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """Where the cloud trains (`chord_fl.machine.torch_device`); devices stay on the CPU."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the cloud trains: auto (a GPU when torch sees one, else the CPU), cpu, cuda",
    )


def add_quantizer_options(parser: argparse.ArgumentParser) -> None:
    """The code table and the scale granularity of code strategies (`Setup.code_bits`, `scales`)."""
    parser.add_argument(
        "--code-bits",
        nargs=4,
        type=int,
        default=list(CodeTable().bits),
        help="the width each 2-bit code stands for (0: pruned)",
    )
    parser.add_argument(
        "--scales",
        choices=SCALES,
        default="channel",
        help="an fp16 scale per stored channel, or shared per tensor and width",
    )


def add_selection_options(parser: argparse.ArgumentParser) -> None:
    """How hypernetworks are supervised and kept (`HyperTrainConfig.select_margin`,
    `tier_guard`, `wider_than_losses`, `sensitivity_temperature`, `exponents`)."""
    parser.add_argument(
        "--select-margin",
        type=float,
        default=HyperTrainConfig().select_margin,
        help="paired standard errors by which a trained network must beat its start on validation",
    )
    parser.add_argument(
        "--no-tier-guard",
        action="store_true",
        help="serve a trained network to every tier or none, on the fleet's mean alone (the rule "
        "before 2026-12-05), instead of to each tier where it wins there",
    )
    parser.add_argument(
        "--wider-than-losses",
        action="store_true",
        help="let a tier wider than one where the trained network loses still take it (the rule "
        "before commit e79807f)",
    )
    parser.add_argument(
        "--sensitivity-temperature",
        type=float,
        default=HyperTrainConfig().sensitivity_temperature,
        help="the supervised sensitivity's targets are drawn from the backbone's p^(1/T)",
    )
    add_exponent_option(parser)


def add_exponent_option(parser: argparse.ArgumentParser) -> None:
    """The importance exponents validation chooses from (`HyperTrainConfig.exponents`)."""
    parser.add_argument(
        "--exponents",
        nargs="+",
        type=float,
        default=list(HyperTrainConfig.exponents),
        help="importance exponents tried on validation for `global` and each start (1: none)",
    )
