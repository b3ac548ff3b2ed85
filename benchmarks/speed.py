"""Speed, memory and payload figures of CHORD, each the median of repeated runs on one thread.

1. Cloud: codes for 10,000 devices (hypernetworks + allocation, batched) -> devices per second.
2. Device: decode the payload, quantize the frozen weights, score all items -> milliseconds, and
   the ratio to one round of FedAvg local training on the same backbone and sequence; then what
   the item-row refinement of `refine-items` adds.
3. Memory: packed quantized tensors at a 3-bit budget against their fp32 bytes.
4. Payload: bytes of the code message per device against the fp32 weights it replaces.

    python benchmarks/speed.py --dataset ml-100k --backbone sasrec
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from chord_fl.cloud import issue_codes, tier_budgets
from chord_fl.data import load_dataset, make_split, pad_left
from chord_fl.federation.phone import LOCAL_LOSS
from chord_fl.federation.runconfig import RunConfig
from chord_fl.hypernet.networks import ChordHyperNet
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.machine import machine_line
from chord_fl.models import seeded_backbone
from chord_fl.quant.codec import (
    HEADER_BYTES,
    decode_strategy,
    empirical_entropy,
    encode_strategy,
    packed_bytes,
)
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.refine import refine_item_rows
from chord_fl.tiers import DEFAULT_FLEET, Fleet, Tier, assign_tiers


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--data-dir")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=250, help="devices per hypernetwork batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--local-epochs",
        type=int,
        default=RunConfig().local_epochs,
        help="FedAvg local epochs (default: the simulation's)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {machine_line()}")

    data = load_dataset(args.dataset, args.data_dir)
    split = make_split(data, rounds=1)
    # Timing does not depend on trained values, so a seeded backbone of the same shape serves.
    frozen = seeded_backbone(args.backbone, data.num_items, seed=0).eval()
    prepared = PreparedModel(frozen)
    channels = prepared.channels
    hypernet = ChordHyperNet(frozen, channels, frozen.hidden_size).eval()
    windows = [split.users[i % len(split)].window(1) for i in range(args.devices)]
    profiles = torch.from_numpy(encode_profiles(frozen, windows))
    budgets = tier_budgets(DEFAULT_FLEET, channels)[assign_tiers(DEFAULT_FLEET, args.devices, 0)]

    def importances() -> np.ndarray:
        with torch.no_grad():
            chunks = range(0, args.devices, args.chunk)
            return torch.cat([hypernet(profiles[i : i + args.chunk]) for i in chunks]).numpy()

    def cloud_round() -> np.ndarray:
        return issue_codes(prepared, importances(), budgets)

    cloud = median_seconds(cloud_round, max(1, args.repeats // 2))
    networks = median_seconds(importances, max(1, args.repeats // 2))
    codes = cloud_round()
    print(
        f"cloud: {args.devices} devices in {cloud:.3f} s = {args.devices / cloud:,.0f} devices/s "
        f"(hypernetworks {networks:.3f} s, allocation {cloud - networks:.3f} s; {args.backbone}, "
        f"{data.num_items} items, {channels.channels} channels; target >= 10,000)"
    )

    user = split.users[0]
    seqs = frozen.pad_windows([user.window(1)])
    payload = encode_strategy(codes[0])

    def device_round() -> None:
        decoded = decode_strategy(payload, channels.channels)
        model = prepared.quantize(decoded, fresh_model=False).model
        with torch.no_grad():
            model.full_scores(seqs)

    device = median_seconds(device_round, args.repeats * 4)
    decoded = decode_strategy(payload, channels.channels)
    refine = median_seconds(
        lambda: refine_item_rows(prepared, decoded, user.window(1)), args.repeats * 4
    )
    local = seeded_backbone(args.backbone, data.num_items, seed=0)
    optimizer = torch.optim.Adam(local.parameters(), lr=1e-3)
    # As a FedAvg device trains in the simulation (chord_fl.federation.phone.Phone.local_fit).
    window = user.window(1)
    train_seqs = torch.from_numpy(pad_left([window], min(frozen.max_len + 1, len(window))))

    def fedavg_round() -> None:
        local.train()
        for _ in range(args.local_epochs):
            loss = local.training_loss(train_seqs, LOCAL_LOSS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    fedavg = median_seconds(fedavg_round, args.repeats * 4)
    print(
        f"device: decode + quantize + score {1000 * device:.1f} ms (target <= 20); FedAvg local "
        f"training, {args.local_epochs} epochs over the same sequence, {1000 * fedavg:.1f} ms "
        f"({1000 * fedavg / args.local_epochs:.1f} ms an epoch): CHORD is "
        f"{fedavg / device:.1f}x faster (target >= 10x)"
    )
    print(
        f"device, with refine-items: + {1000 * refine:.1f} ms to re-allocate the item table's "
        f"rows for the device's window ({1000 * (device + refine):.1f} ms a round)"
    )

    three_bit = Fleet((Tier("3-bit", 1.0, 1e6, 1e6, 1.0, 1.0, avg_bits=3.0),))
    budget = tier_budgets(three_bit, channels)
    three_codes = issue_codes(
        prepared, np.random.default_rng(0).random((1, channels.channels)), budget
    )
    quantized = prepared.quantize(three_codes[0])
    packed = quantized.nbytes - channels.unquantized_bytes
    print(
        f"memory: packed quantized tensors at a 3-bit budget ({quantized.avg_bits:.2f} bits) "
        f"{packed:,} B vs fp32 {4 * channels.weights:,} B = {packed / (4 * channels.weights):.2%} "
        f"(target <= 12.5%); whole model {quantized.nbytes:,} B vs {channels.fp32_bytes:,} B"
    )

    full = HEADER_BYTES + packed_bytes(channels.channels)
    sizes = [len(encode_strategy(row)) for row in codes[:1000]]
    entropy = np.mean([empirical_entropy(row) for row in codes[:1000]])
    print(
        f"payload: full codes {full} B = ceil(2*{channels.channels}/8) + {HEADER_BYTES} B header; "
        f"fp32 weights {4 * channels.weights:,} B, ratio {4 * channels.weights / full:,.0f}x; "
        f"sent (smallest form) mean {np.mean(sizes):.0f} B = "
        f"{8 * np.mean(sizes) / channels.channels:.3f} bits/channel vs entropy {entropy:.3f}"
    )


if __name__ == "__main__":
    main()
