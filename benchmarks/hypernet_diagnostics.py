"""Why hypernetwork training does not improve on its initialisation: measured, step by step.

1. Relaxation against allocator: at the untrained hypernetworks' importances, how far the relaxed
   code probabilities used for gradients are from the hard codes the allocator issues (entropy,
   agreement of the most probable code, probability of the issued code), per temperature; and
   whether the gradient sees the budget (the gradient of expected spending with respect to the
   importances, with the multiplier held constant or differentiated implicitly).
2. Training settings side by side, each from the same initialisation and the same batches: the
   training loss, the share of item rows the issued codes prune, the share of training targets
   among them, and validation NDCG@10 (full ranking, every user) before and after the steps.
3. Sensitivity supervision (`chord-sens`), epoch by epoch from its start (the cloud-wide prior
   and the backbone's own item scores): its loss on the training windows and on held-out
   validation windows' sensitivity (the window ceiling's targets), the share of channels whose
   code equals the code the window ceiling gets at the same budget (overall and in the item
   table), and validation NDCG@10 of its codes, beside the ceiling's own and the prior's alone.
   It shows whether the map learns the sensitivity and whether learning it moves validation
   (`--exponent`: every importance raised to it, as training does at the exponent it chose).

    python benchmarks/hypernet_diagnostics.py --dataset ml-100k --backbone sasrec --steps 60
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from results_file import difference_text

from chord_fl.cloud import evaluate_codes, issue_codes, tier_budgets
from chord_fl.data.split import VALIDATION
from chord_fl.experiment import Setup, load_backbone, load_split
from chord_fl.hypernet.epochs import supervised_epoch, training_examples
from chord_fl.hypernet.networks import ChordHyperNet
from chord_fl.hypernet.profile import encode_profiles
from chord_fl.hypernet.relax import Relaxation, soft_codes
from chord_fl.hypernet.supervision import (
    log_ratio_loss,
    sensitivity_set,
    training_windows,
)
from chord_fl.hypernet.training import HyperTrainConfig, item_head_index
from chord_fl.machine import machine_line
from chord_fl.methods import CHORD_VARIANTS
from chord_fl.quant.budget import channel_budget
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import expected_sensitivity, normalised
from chord_fl.tiers import DEFAULT_FLEET, assign_tiers

SETTINGS = {
    "default": {},
    "implicit budget": {"implicit_budget": True},
    "temperature 0.01": {"temperature": 0.01},
    "distill": {"objective": "distill"},
    "frozen item head": {"freeze_item_head": True},
    "all four": {
        "implicit_budget": True,
        "temperature": 0.01,
        "objective": "distill",
        "freeze_item_head": True,
    },
}


def relaxation_report(
    relaxation: Relaxation, importance: torch.Tensor, budgets: np.ndarray
) -> None:
    prepared = relaxation.prepared
    hard = torch.from_numpy(issue_codes(prepared, importance.numpy(), budgets).astype(np.int64))
    left = torch.tensor(channel_budget(prepared.channels, budgets), dtype=torch.float32)
    for temperature in (1.0, 0.1, 0.01):
        p = soft_codes(importance, relaxation.error, relaxation.cost, left, temperature)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
        agree = (p.argmax(-1) == hard).float().mean()
        issued = p.gather(-1, hard[..., None]).mean()
        print(
            f"  temperature {temperature:<5g} entropy {entropy:.3f} nats "
            f"(uniform {np.log(4):.3f}), "
            f"most probable code = issued code for {agree:.1%} of channels, "
            f"probability of the issued code {issued:.3f}"
        )
    for implicit in (False, True):
        leaf = importance.clone().requires_grad_()
        p = soft_codes(leaf, relaxation.error, relaxation.cost, left, 1.0, implicit)
        (spent,) = torch.autograd.grad((p * relaxation.cost).sum(), leaf, retain_graph=True)
        (top,) = torch.autograd.grad(p[..., -1].sum(), leaf)
        print(
            f"  multiplier {'implicit' if implicit else 'constant'}: |d spent / d importance| = "
            f"{spent.abs().sum():.3g} bytes against |d P(8-bit) / d importance| = "
            f"{top.abs().sum():.3g}"
        )


def batch_step(
    net: ChordHyperNet,
    optimizer: torch.optim.Optimizer,
    relaxation: Relaxation,
    config: HyperTrainConfig,
    batch: tuple[list[np.ndarray], np.ndarray, np.ndarray],
    update: bool,
) -> tuple[float, float]:
    """One batch: its loss (after an update step when `update`) and the share of its targets
    whose item row the issued codes prune."""
    prepared = relaxation.prepared
    frozen = prepared.frozen
    windows, targets, left = batch
    net.train(update)
    importance = net(torch.from_numpy(encode_profiles(frozen, windows)))
    seqs = frozen.pad_windows(windows)
    loss = relaxation.loss(importance, left, seqs, torch.from_numpy(targets), config)
    if update:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    total = left + prepared.channels.fixed_bytes
    codes = issue_codes(prepared, importance.detach().numpy(), total)
    pruned = codes[:, prepared.item_group.codes][np.arange(len(targets)), targets] == 0
    return loss.item(), float(pruned.mean())


def supervision_report(
    prepared: PreparedModel, split, args: argparse.Namespace, device_budgets: np.ndarray
) -> None:
    """Section 3 (see the module's docstring), on `args.held_out` validation users."""
    frozen, channels = prepared.frozen, prepared.channels
    defaults = HyperTrainConfig()
    rng = np.random.default_rng(0)
    # Held-out users first; the supervision windows come from the others only (a validation
    # window is a user's whole history, which is also its last training prefix).
    order = rng.permutation(len(split))
    users = np.sort(order[: args.held_out])
    pool = np.sort(order[args.held_out :][: defaults.users_per_epoch])
    windows = training_windows(split.histories(), pool, defaults.sensitivity_positions)
    supervision = sensitivity_set(
        frozen, channels, windows, defaults.sensitivity_samples, seed=0, progress=True
    )
    held_windows = [split.users[i].window(VALIDATION) for i in users]
    held_targets = split.targets(VALIDATION)[users]
    budgets = device_budgets[users]
    profiles = torch.from_numpy(encode_profiles(frozen, held_windows))
    ceiling = normalised(
        expected_sensitivity(frozen, channels, held_windows, defaults.sensitivity_samples, 1)
        ** args.exponent
    )
    ceiling_codes = issue_codes(prepared, ceiling, budgets)
    items = prepared.item_group.codes

    def ndcg(codes: np.ndarray) -> np.ndarray:
        """Per-user NDCG@10, full ranking."""
        return evaluate_codes(prepared, held_windows, held_targets, codes)["full"]["ndcg@10"]

    at_ceiling = ndcg(ceiling_codes)

    prior = np.broadcast_to(supervision.prior**args.exponent, ceiling.shape)
    prior_codes = issue_codes(prepared, prior, budgets)
    print(
        f"  {len(supervision)} training windows ({len(pool)} users' last "
        f"{defaults.sensitivity_positions}), {len(users)} held-out validation users at their "
        f"tiers' budgets; NDCG@10 (full) of the window ceiling's codes {at_ceiling.mean():.4f}, "
        f"of the prior's alone {ndcg(prior_codes).mean():.4f} (its codes equal the ceiling's on "
        f"{(prior_codes == ceiling_codes).mean():.1%} of channels, "
        f"{(prior_codes[:, items] == ceiling_codes[:, items]).mean():.1%} of item rows)"
    )
    (recipe,) = CHORD_VARIANTS["chord-sens"].recipes
    torch.manual_seed(0)
    net = ChordHyperNet(frozen, channels, frozen.hidden_size, recipe.network)
    net.set_prior(supervision.prior)
    net.exponent.fill_(args.exponent)  # the network then fits the targets raised to it
    optimizer = torch.optim.Adam(net.parameters(), lr=defaults.lr)
    held = torch.from_numpy(ceiling).float()
    for epoch in range(args.supervised_epochs + 1):
        train_loss = "-"
        if epoch:
            net.train()
            losses = supervised_epoch(net, optimizer, supervision, defaults.batch_users, rng)
            train_loss = f"{np.mean(losses):.4f}"
        net.eval()
        with torch.no_grad():
            importance = net(profiles)
            held_loss = log_ratio_loss(importance, held).item()
        codes = issue_codes(prepared, importance.numpy(), budgets)
        scores = ndcg(codes)
        if not epoch:
            start, against = scores, f"the ceiling's lead {difference_text(at_ceiling - scores)}"
        else:
            against = f"against the start {difference_text(scores - start)}"
        print(
            f"    epoch {epoch:>2}: loss {train_loss} training, {held_loss:.4f} held out; codes "
            f"equal the ceiling's on {(codes == ceiling_codes).mean():.1%} of channels, "
            f"{(codes[:, items] == ceiling_codes[:, items]).mean():.1%} of item rows; "
            f"NDCG@10 {scores.mean():.4f} ({against}, paired)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--backbone", default="sasrec")
    parser.add_argument("--data-dir")
    parser.add_argument("--checkpoint", help="the frozen backbone (default: pretrain's cache)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--report-every", type=int, default=20)
    parser.add_argument("--lr", type=float, default=HyperTrainConfig().lr)
    parser.add_argument(
        "--settings",
        nargs="*",
        choices=SETTINGS,
        default=list(SETTINGS),
        help="section 2 (none: skip)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--supervised-epochs", type=int, default=8, help="section 3 (0: skip)")
    parser.add_argument("--held-out", type=int, default=500, help="section 3's validation users")
    parser.add_argument(
        "--exponent",
        type=float,
        default=1.0,
        help="section 3: importance exponent of the network, the ceiling and the prior",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}")

    setup = Setup(args.dataset, args.backbone, args.data_dir, rounds=1, checkpoint=args.checkpoint)
    split = load_split(setup)
    prepared = PreparedModel(load_backbone(setup, split))
    frozen = prepared.frozen.eval().requires_grad_(False)
    relaxation = Relaxation(prepared)
    budgets = tier_budgets(DEFAULT_FLEET, prepared.channels)
    device_budgets = budgets[assign_tiers(DEFAULT_FLEET, len(split), 0)]
    validation_windows = split.windows(VALIDATION)
    validation_targets = split.targets(VALIDATION)
    validation_profiles = torch.from_numpy(encode_profiles(frozen, validation_windows))

    def validation_ndcg(net: ChordHyperNet) -> float:
        with torch.no_grad():
            codes = issue_codes(prepared, net(validation_profiles).numpy(), device_budgets)
        metrics = evaluate_codes(prepared, validation_windows, validation_targets, codes)
        return float(metrics["full"]["ndcg@10"].mean())

    torch.manual_seed(0)
    initial = ChordHyperNet(frozen, prepared.channels, frozen.hidden_size).eval()
    print(f"\n1. Relaxation against allocator ({args.dataset}, {args.backbone}, untrained):")
    with torch.no_grad():
        importance = initial(validation_profiles[:256])
    relaxation_report(relaxation, importance, device_budgets[:256])

    print(
        f"\n2. {args.steps} training steps, lr {args.lr}, the same batches for every setting; each "
        f"line averages {args.report_every} batches (step 0: the untrained hypernetworks on the "
        f"first {args.report_every}, without updates):"
    )
    start = validation_ndcg(initial)
    item_head = item_head_index(prepared)
    shares = np.array([tier.share for tier in DEFAULT_FLEET.tiers])
    histories = split.histories()
    defaults = HyperTrainConfig(lr=args.lr)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(args.steps):
        users = rng.permutation(len(histories))[: defaults.batch_users]
        windows, targets = training_examples(histories, users, defaults.positions, rng)
        tiers = rng.choice(len(shares), size=len(users), p=shares / shares.sum())
        left = channel_budget(prepared.channels, budgets[tiers])
        batches.append((windows, targets, left))
    for name in args.settings:
        config = replace(defaults, **SETTINGS[name])
        net = ChordHyperNet(frozen, prepared.channels, frozen.hidden_size)
        net.load_state_dict(initial.state_dict())
        if config.freeze_item_head:
            net.heads[item_head].requires_grad_(False)
        optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=args.lr)
        print(f"  {name}:")
        block = args.report_every
        run_batch = partial(batch_step, net, optimizer, relaxation, config)
        blocks = [(0, [run_batch(batch, update=False) for batch in batches[:block]])]
        for first in range(0, args.steps, block):
            blocks.append(
                (first + block, [run_batch(b, True) for b in batches[first : first + block]])
            )
        for step, results in blocks:
            losses, pruned = zip(*results, strict=True)
            print(
                f"    step {step:>4}: loss {np.mean(losses):.4f}, training targets pruned "
                f"{np.mean(pruned):.1%} of {len(pruned) * config.batch_users}"
            )
        print(
            f"    validation NDCG@10 (full, {len(validation_targets)} users): "
            f"{start:.4f} untrained -> {validation_ndcg(net.eval()):.4f}"
        )

    if args.supervised_epochs:
        print(
            f"\n3. Sensitivity supervision, {args.supervised_epochs} epochs, importance exponent "
            f"{args.exponent:g}:"
        )
        supervision_report(prepared, split, args, device_budgets)


if __name__ == "__main__":
    main()
