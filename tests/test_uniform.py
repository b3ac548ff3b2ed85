"""The strong uniform comparator: widths 1..8, per-channel or per-tensor scales, byte-exact."""

import numpy as np
import pytest
import torch

from chord_fl.errors import BudgetExceeded, ConfigError
from chord_fl.methods import Cloud, uniform_widths
from chord_fl.models import seeded_backbone
from chord_fl.quant.budget import (
    UNIFORM_BITS,
    check_within_budget,
    coded_bytes,
    floor_bytes,
    uniform_bytes,
    widest_uniform,
)
from chord_fl.quant.channels import channel_map, channel_rows
from chord_fl.quant.quantizer import PreparedModel, quantize_rows
from chord_fl.quant.uniform import quantize_uniform

NUM_ITEMS = 40


@pytest.fixture(params=["sasrec", "caser"])
def frozen(request):
    return seeded_backbone(request.param, NUM_ITEMS, seed=3, hidden=16, max_len=10).eval()


@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("bits", UNIFORM_BITS)
def test_packed_storage_takes_exactly_the_bytes_the_cloud_computes(frozen, bits, per_tensor):
    channels = channel_map(frozen)
    model = quantize_uniform(frozen, channels, bits, per_tensor)
    assert model.nbytes == uniform_bytes(channels, bits, per_tensor)
    # Packed integers, not a formula: the buffers are as small as the width says.
    for group in channels.groups:
        runs = 1 if per_tensor else group.channels
        assert model.packed[group.name].shape[0] == runs
        assert model.scales[group.name].shape == (runs,)


def test_the_frozen_model_is_untouched_and_the_copy_holds_few_values(frozen):
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    channels = channel_map(frozen)
    model = quantize_uniform(frozen, channels, 3, per_tensor=False).model
    for name, value in frozen.state_dict().items():
        assert torch.equal(value, before[name])
    params = dict(model.named_parameters())
    for group in channels.groups:
        rows = channel_rows(params[group.name], group.channel_axis)
        for row in rows[:5]:
            assert len(torch.unique(row)) <= 7  # 3 bits symmetric: levels -3..3


def test_one_bit_is_sign_times_mean_magnitude():
    rows = torch.randn(6, 20)
    levels, scales, error = quantize_rows(rows, 1)
    assert set(levels.unique().tolist()) <= {-1, 1}
    torch.testing.assert_close(scales.float(), rows.abs().mean(1), rtol=1e-3, atol=1e-4)
    assert (error < (rows**2).sum(1)).all()  # better than pruning the channel


def test_error_falls_from_one_bit_up():
    rows = torch.randn(30, 64)
    errors = [quantize_rows(rows, bits)[2].sum() for bits in UNIFORM_BITS]
    assert all(high < low for low, high in zip(errors, errors[1:], strict=False))


def test_widest_uniform_is_the_widest_that_fits(frozen):
    channels = channel_map(frozen)
    sizes = {(b, t): uniform_bytes(channels, b, t) for b in UNIFORM_BITS for t in (False, True)}
    smallest = min(sizes.values())
    for budget in np.linspace(smallest - 10, max(sizes.values()) + 10, 97).astype(int):
        choice = widest_uniform(channels, int(budget))
        fitting = [key for key, size in sizes.items() if size <= budget]
        if not fitting:
            assert choice is None
            continue
        assert sizes[choice] <= budget
        assert choice[0] == max(bits for bits, _ in fitting)
        if not choice[1]:
            continue
        assert sizes[choice[0], False] > budget  # per-tensor only when per-channel does not fit


def test_uniform_widths_name_a_budget_that_holds_nothing(frozen):
    channels = channel_map(frozen)
    with pytest.raises(ConfigError, match="device 1"):
        uniform_widths(channels, np.array([10**9, 1]))


def test_coded_bytes_and_the_one_budget_check(frozen):
    prepared = PreparedModel(frozen)
    channels = prepared.channels
    codes = np.random.default_rng(0).integers(0, 4, size=(3, channels.channels))
    spent = coded_bytes(channels, prepared.table, codes)
    assert spent[1] == prepared.quantize(codes[1]).nbytes
    assert floor_bytes(channels, prepared.table) == prepared.quantize(0 * codes[0]).nbytes
    check_within_budget(spent, spent, ["a", "b", "c"])
    with pytest.raises(BudgetExceeded, match="^c was given a model of"):
        check_within_budget(spent, spent - np.array([0, 0, 1]), ["a", "b", "c"])


def test_evaluate_method_uniform_stays_within_budget_and_reports_its_width(frozen):
    from chord_fl.experiment import evaluate_method

    prepared = PreparedModel(frozen)
    rng = np.random.default_rng(1)
    windows = [rng.integers(1, NUM_ITEMS + 1, size=6) for _ in range(4)]
    targets = rng.integers(1, NUM_ITEMS + 1, size=4)
    negatives = rng.integers(1, NUM_ITEMS + 1, size=(4, 5))
    budgets = np.array([uniform_bytes(prepared.channels, b, False) for b in (2, 3, 3, 8)])
    row, per_device = evaluate_method(
        "uniform", Cloud(prepared), windows, targets, None, budgets, negatives
    )
    assert row["uniform_widths"] == ["2-bit/channel", "3-bit/channel", "8-bit/channel"]
    assert row["model_bytes"] == budgets.mean()
    assert row["avg_bits"] == pytest.approx(np.mean([2, 3, 3, 8]))
    assert per_device["full"]["ndcg@10"].shape == (4,)
