"""Oracle and window sensitivities against a plain autograd computation, one target at a time."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chord_fl.data.split import pad_left
from chord_fl.models import seeded_backbone
from chord_fl.quant.channels import channel_map, channel_rows
from chord_fl.sensitivity import (
    expected_sensitivity,
    expected_weight_sensitivity,
    target_distribution,
    target_sensitivity,
)

NUM_ITEMS = 12


@pytest.fixture(params=["sasrec", "caser"])
def model(request):
    return seeded_backbone(request.param, NUM_ITEMS, seed=5, hidden=8, max_len=6).eval()


def _plain(model, channels, window, target, per_weight=False):
    """Squared gradient of one target's cross-entropy, summed per channel (or per weight, in
    code-vector order), by hand."""
    params = dict(model.named_parameters())
    weights = [params[g.name] for g in channels.groups]
    model.zero_grad()
    scores = model.full_scores(torch.from_numpy(pad_left([window], model.max_len)))
    loss = F.cross_entropy(scores, torch.tensor([int(target)]))
    grads = torch.autograd.grad(loss, weights)
    squares = [
        channel_rows(g, group.channel_axis) ** 2
        for g, group in zip(grads, channels.groups, strict=True)
    ]
    return torch.cat([sq.flatten() if per_weight else sq.sum(1) for sq in squares]).numpy()


WINDOWS = [np.array([3, 1, 7]), np.array([2, 9, 4, 4, 11, 5]), np.array([12])]


def test_target_sensitivity_is_the_squared_gradient_of_that_target(model):
    channels = channel_map(model)
    targets = np.array([5, 1, 12])
    got = target_sensitivity(model, channels, WINDOWS, targets)
    for row, (window, target) in enumerate(zip(WINDOWS, targets, strict=True)):
        np.testing.assert_allclose(
            got[row], _plain(model, channels, window, target), rtol=1e-4, atol=1e-9
        )


def test_exact_expected_sensitivity_weights_every_item_by_its_probability(model):
    channels = channel_map(model)
    got = expected_sensitivity(model, channels, WINDOWS, samples=None)
    for row, window in enumerate(WINDOWS):
        q = target_distribution(model, window)
        assert q[0] == 0 and np.all(q[np.asarray(window)] == 0)  # padding, seen items
        assert q.sum() == pytest.approx(1.0)
        expected = sum(q[y] * _plain(model, channels, window, y) for y in range(1, NUM_ITEMS + 1))
        np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=1e-9)


def test_sharpened_targets_weight_every_item_by_its_tempered_probability(model):
    channels = channel_map(model)
    window = WINDOWS[0]
    p = target_distribution(model, window)
    q = target_distribution(model, window, temperature=0.3)
    unseen = p > 0
    assert np.all(q[~unseen] == 0) and q.sum() == pytest.approx(1.0)
    tempered = p[unseen] ** (1 / 0.3)
    np.testing.assert_allclose(q[unseen], tempered / tempered.sum(), rtol=1e-9)
    assert q.max() > p.max()  # sharper: the top item gains
    got = expected_sensitivity(model, channels, [window], samples=None, temperature=0.3)[0]
    expected = sum(q[y] * _plain(model, channels, window, y) for y in range(1, NUM_ITEMS + 1))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)
    sampled = expected_sensitivity(model, channels, [window], samples=3, seed=2, temperature=0.3)
    table = next(g for g in channels.groups if g.name == model.output_table)
    rows = np.flatnonzero(unseen)  # output rows outside the window: exact under sampling too
    np.testing.assert_allclose(sampled[0, table.codes][rows], got[table.codes][rows], rtol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        target_distribution(model, window, temperature=0.0)


def test_expected_weight_sensitivity_is_the_per_weight_expectation(model):
    channels = channel_map(model)
    window = WINDOWS[1]
    q = target_distribution(model, window)
    expected = sum(
        q[y] * _plain(model, channels, window, y, per_weight=True) for y in range(1, NUM_ITEMS + 1)
    )
    got = expected_weight_sensitivity(model, channels, window)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)
    by_channel = np.add.reduceat(got, np.cumsum([0, *channels.elements()[:-1]]))
    np.testing.assert_allclose(
        by_channel, expected_sensitivity(model, channels, [window], samples=None)[0], rtol=1e-6
    )


def test_sampled_expected_sensitivity_converges_to_the_exact_one(model):
    channels = channel_map(model)
    exact = expected_sensitivity(model, channels, WINDOWS[:1], samples=None)[0]
    rough = expected_sensitivity(model, channels, WINDOWS[:1], samples=8, seed=1)[0]
    close = expected_sensitivity(model, channels, WINDOWS[:1], samples=4000, seed=1)[0]
    assert np.abs(close - exact).sum() < 0.5 * np.abs(rough - exact).sum()
    assert np.abs(close - exact).sum() < 0.05 * exact.sum()
    again = expected_sensitivity(model, channels, WINDOWS[:1], samples=8, seed=1)[0]
    np.testing.assert_array_equal(rough, again)  # seeded


def test_sampled_output_rows_outside_the_window_are_exact(model):
    channels = channel_map(model)
    table = next(g for g in channels.groups if g.name == model.output_table)
    exact = expected_sensitivity(model, channels, WINDOWS, samples=None)
    sampled = expected_sensitivity(model, channels, WINDOWS, samples=3, seed=2)
    for row, window in enumerate(WINDOWS):
        outside = np.ones(table.channels, dtype=bool)
        outside[np.asarray(window)] = False
        outside[0] = False
        np.testing.assert_allclose(
            sampled[row, table.codes][outside], exact[row, table.codes][outside], rtol=1e-4
        )
