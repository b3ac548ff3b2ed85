import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chord_fl.errors import ConfigError
from chord_fl.quant.allocation import allocate, codes_cost, codes_error, uniform_codes

BITS = (0, 2, 4, 8)
PROPERTY = settings(max_examples=200, deadline=None)


def tables(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Error and cost (C, 4) of symmetric per-channel quantization, as the cost model defines."""
    error = np.zeros((len(rows), len(BITS)))
    cost = np.zeros((len(rows), len(BITS)))
    for c, w in enumerate(rows):
        for q, bits in enumerate(BITS):
            if bits == 0:
                error[c, q] = np.sum(w**2)
                continue
            levels = 2 ** (bits - 1) - 1
            scale = np.abs(w).max() / levels or 1.0
            restored = np.clip(np.round(w / scale), -levels, levels) * scale
            error[c, q] = np.sum((w - restored) ** 2)
            cost[c, q] = np.ceil(bits * w.size / 8) + 2
    return error, cost


@st.composite
def instances(draw, max_channels=60, max_devices=5):
    channels = draw(st.integers(1, max_channels))
    devices = draw(st.integers(1, max_devices))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = [
        rng.normal(size=rng.integers(1, 33)) * rng.exponential() * (rng.random() > 0.05)
        for _ in range(channels)
    ]
    error, cost = tables(rows)
    kind = draw(st.sampled_from(["continuous", "ties", "sparse", "shared"]))
    if kind == "continuous":
        importance = rng.exponential(size=(devices, channels))
    elif kind == "ties":
        importance = rng.integers(0, 3, size=(devices, channels)).astype(float)
    elif kind == "sparse":
        importance = rng.exponential(size=(devices, channels)) * (rng.random((devices, 1)) > 0.5)
    else:  # every device alike, so devices differ only by budget
        importance = np.repeat(rng.exponential(size=(1, channels)), devices, axis=0)
    fraction = rng.uniform(0, 1.2, devices)
    budget = np.floor(fraction * cost[:, -1].sum())
    return importance, error, cost, budget


def objective(codes, error, importance):
    return codes_error(codes, error, importance)


def reference(importance, error, cost, budget):
    """The greedy written plainly: per-channel hull, one sorted list of steps, a prefix."""
    channels, num_codes = cost.shape
    codes = np.zeros(importance.shape, dtype=np.uint8)
    for d in range(importance.shape[0]):
        steps = []
        for c in range(channels):
            current, chain = 0, []
            while True:
                best, best_slope = None, -1.0
                for q in range(current + 1, num_codes):
                    gain = error[c, current] - error[c, q]
                    extra = cost[c, q] - cost[c, current]
                    if extra > 0 and gain > 0 and gain / extra > best_slope:
                        best, best_slope = q, gain / extra
                if best is None:
                    break
                if chain:
                    best_slope = min(best_slope, chain[-1][1])
                chain.append((best, best_slope, cost[c, best] - cost[c, current]))
                current = best
            for s, (q, slope, extra) in enumerate(chain):
                eff = importance[d, c] * slope
                # Same comparison precision as the allocator: the top 32 bits of the float.
                key = int(np.float64(eff).view(np.int64) >> 32)
                if key > 0:
                    steps.append((-key, c, s, q, extra))
        spent = 0.0
        for _, c, _, q, extra in sorted(steps):
            if spent + extra > budget[d]:
                break
            spent += extra
            codes[d, c] = q
    return codes


@PROPERTY
@given(instances())
def test_budget_is_never_exceeded(case):
    importance, error, cost, budget = case
    codes = allocate(importance, error, cost, budget)
    assert codes.dtype == np.uint8 and codes.shape == importance.shape
    assert (codes_cost(codes, cost) <= budget).all()


@PROPERTY
@given(instances(), st.data())
def test_more_budget_never_lowers_a_code(case, data):
    importance, error, cost, budget = case
    extra = data.draw(st.lists(st.integers(0, 400), min_size=budget.size, max_size=budget.size))
    low = allocate(importance, error, cost, budget)
    high = allocate(importance, error, cost, budget + np.array(extra))
    assert (high >= low).all()


@PROPERTY
@given(instances())
def test_deterministic_and_inputs_untouched(case):
    importance, error, cost, budget = case
    before = [array.copy() for array in case]
    first = allocate(importance, error, cost, budget)
    second = allocate(importance.copy(), error.copy(), cost.copy(), budget.copy())
    np.testing.assert_array_equal(first, second)
    for array, copy in zip(case, before, strict=True):
        np.testing.assert_array_equal(array, copy)


@PROPERTY
@given(instances())
def test_matches_the_plain_greedy(case):
    importance, error, cost, budget = case
    np.testing.assert_array_equal(
        allocate(importance, error, cost, budget), reference(importance, error, cost, budget)
    )


@PROPERTY
@given(instances())
def test_full_budget_gives_every_important_channel_its_least_error(case):
    importance, error, cost, _ = case
    budget = np.full(importance.shape[0], cost[:, -1].sum())
    codes = allocate(importance, error, cost, budget)
    reached = error[np.arange(error.shape[0]), codes]
    important = importance > 0
    np.testing.assert_array_equal(
        reached[important], np.broadcast_to(error.min(1), codes.shape)[important]
    )
    # Where every code lowers the error, least error means the top code.
    strict = important & (np.diff(error, axis=1) < 0).all(axis=1)
    assert (codes[strict] == len(BITS) - 1).all()
    # A channel no device cares about costs bytes and buys nothing: it stays pruned.
    assert (codes[~important] == 0).all()


@PROPERTY
@given(instances())
def test_zero_budget_prunes_everything(case):
    importance, error, cost, budget = case
    codes = allocate(importance, error, cost, np.zeros_like(budget))
    assert (codes == 0).all()


@PROPERTY
@given(instances(max_channels=6, max_devices=3))
def test_greedy_is_optimal_for_the_bytes_it_spends(case):
    # The prefix of hull steps solves the LP relaxation at its own spend, and it is integral, so
    # no code vector costing at most as much has lower error. Against the optimum at the full
    # budget it loses at most the gain of one step (the first that did not fit).
    importance, error, cost, budget = case
    codes = allocate(importance, error, cost, budget)
    got = objective(codes, error, importance)
    spent = codes_cost(codes, cost)
    every = np.array(list(itertools.product(range(len(BITS)), repeat=error.shape[0])))
    every_cost = codes_cost(every, cost)
    channels = np.arange(error.shape[0])
    every_error = importance @ error[channels, every].T  # (D, combinations)
    tolerance = 1e-5 * (importance @ error[:, 0]) + 1e-9
    for d in range(importance.shape[0]):
        at_spend = every_error[d][every_cost <= spent[d]].min()
        assert got[d] <= at_spend + tolerance[d]
        at_budget = every_error[d][every_cost <= budget[d]].min()
        biggest_step = (importance[d] * (error[:, 0] - error.min(1))).max()
        assert got[d] <= at_budget + biggest_step + tolerance[d]


def test_beats_uniform_precision_on_a_realistic_model():
    rng = np.random.default_rng(7)
    rows = [rng.normal(size=rng.integers(16, 64)) * rng.exponential() for _ in range(300)]
    error, cost = tables(rows)
    importance = rng.exponential(size=(4, 300)) ** 2
    for q in range(1, len(BITS)):
        budget = np.full(4, cost[:, q].sum())
        uniform = uniform_codes(cost, budget)
        assert (uniform == q).all()
        greedy = objective(allocate(importance, error, cost, budget), error, importance)
        plain = objective(uniform, error, importance)
        # At the all-8-bit budget both keep every channel whole.
        assert (greedy < plain).all() if q < len(BITS) - 1 else (greedy <= plain).all()


HAND_COST = np.array([[0, 3, 5, 9]] * 3, dtype=float)
HAND_ERROR = np.array([[10, 4, 1, 0], [8, 7, 1, 0], [6, 2, 1, 0.5]], dtype=float)


@pytest.mark.parametrize(
    ("importance", "budget", "expected"),
    [
        # Steps by efficiency: ch0 2.0 (3 B), ch0 1.5 (2 B), ch1 1.4 (5 B, its 2-bit code is
        # below the hull), ch2 1.33 (3 B), ch2 0.5 (2 B), ch0 0.25 (4 B), ch1 0.25 (4 B, the
        # tie goes to the lower channel), ch2 0.125 (4 B); running cost 3 5 10 13 15 19 23 27.
        ([1, 1, 1], 4, [1, 0, 0]),
        ([1, 1, 1], 9, [2, 0, 0]),  # ch1's 5 B step stops the prefix though ch2's 3 B would fit
        ([1, 1, 1], 12, [2, 2, 0]),
        ([1, 1, 1], 13, [2, 2, 1]),
        ([1, 1, 1], 19, [3, 2, 2]),
        ([1, 1, 1], 22, [3, 2, 2]),
        ([1, 1, 1], 27, [3, 3, 3]),
        # ch2 doubled: ch2 2.67, ch0 2.0, ch0 1.5, ch2 1.0, ch0 0.25, ch2 0.25; ch1 never.
        ([1, 0, 2], 14, [3, 0, 2]),
        ([1, 0, 2], 100, [3, 0, 3]),
    ],
)
def test_hand_worked_case(importance, budget, expected):
    codes = allocate(np.array([importance], float), HAND_ERROR, HAND_COST, np.array([budget]))
    assert codes.tolist() == [expected]


def test_devices_are_independent_across_chunks():
    rng = np.random.default_rng(3)
    error, cost = tables([rng.normal(size=8) for _ in range(40)])
    importance = rng.exponential(size=(2500, 40)) * (rng.random((2500, 40)) > 0.2)
    budget = rng.uniform(0, cost[:, -1].sum(), 2500)
    together = allocate(importance, error, cost, budget)
    for d in (0, 1, 1091, 1092, 2499):
        alone = allocate(importance[d : d + 1], error, cost, budget[d : d + 1])
        np.testing.assert_array_equal(together[d : d + 1], alone)


def test_negative_zero_importance_counts_as_zero():
    codes = allocate(np.array([[-0.0, 1.0, 1.0]]), HAND_ERROR, HAND_COST, np.array([100.0]))
    assert codes.tolist() == [[0, 3, 3]]


def test_budget_under_the_floor_names_device_and_shortfall():
    with pytest.raises(ConfigError, match=r"device 1: .* 7 bytes short"):
        allocate(np.ones((3, 3)), HAND_ERROR, HAND_COST, np.array([0.0, -7.0, -2.0]))
    floored = HAND_COST + 1  # a channel that costs bytes even when pruned
    with pytest.raises(ConfigError, match=r"device 0: .* 1 bytes short"):
        allocate(np.ones((1, 3)), HAND_ERROR, floored, np.array([2.0]))
    assert allocate(np.ones((1, 3)), HAND_ERROR, floored, np.array([3.0])).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize(
    ("importance", "error", "cost", "budget", "message"),
    [
        (
            np.ones((2, 4)),
            HAND_ERROR,
            HAND_COST,
            np.ones(2),
            r"importance .*\(devices, 3\).*\(2, 4\)",
        ),
        (np.ones(3), HAND_ERROR, HAND_COST, np.ones(1), r"importance .*\(3,\)"),
        (np.ones((2, 3)), HAND_ERROR, HAND_COST, np.ones(3), r"budget .*\(2,\).*\(3,\)"),
        (np.ones((1, 3)), HAND_ERROR[:2], HAND_COST, np.ones(1), r"error .*\(3, 4\).*\(2, 4\)"),
        (np.ones((1, 3)), HAND_ERROR, HAND_COST[:, 0], np.ones(1), r"cost .*\(3,\)"),
        (np.array([[1, np.nan, 1]]), HAND_ERROR, HAND_COST, np.ones(1), "NaN"),
        (np.array([[1, -1, 1]]), HAND_ERROR, HAND_COST, np.ones(1), "negative"),
        (np.array([[1, np.inf, 1]]), HAND_ERROR, HAND_COST, np.ones(1), "inf"),
        (np.ones((1, 3)), HAND_ERROR, HAND_COST[:, ::-1], np.ones(1), "non-decreasing"),
        (np.ones((1, 3)), -HAND_ERROR, HAND_COST, np.ones(1), "error must be finite"),
        (np.ones((1, 3)), HAND_ERROR, HAND_COST, np.array([np.nan]), "NaN"),
    ],
)
def test_bad_input_is_a_config_error(importance, error, cost, budget, message):
    with pytest.raises(ConfigError, match=message):
        allocate(importance, error, cost, budget)


def test_degenerate_sizes():
    assert allocate(np.ones((0, 3)), HAND_ERROR, HAND_COST, np.zeros(0)).shape == (0, 3)
    assert allocate(np.ones((2, 0)), np.ones((0, 4)), np.zeros((0, 4)), np.ones(2)).shape == (2, 0)
    single = allocate(np.ones((1, 3)), HAND_ERROR[:, :1], HAND_COST[:, :1], np.ones(1))
    assert single.tolist() == [[0, 0, 0]]


def test_uniform_codes():
    # Totals per code: 0, 9, 15, 27.
    codes = uniform_codes(HAND_COST, np.array([-1.0, 0.0, 8.0, 9.0, 26.0, 27.0, 1e9]))
    assert codes.dtype == np.uint8 and codes.shape == (7, 3)
    assert codes[:, 0].tolist() == [0, 0, 0, 1, 2, 3, 3]
    assert (codes == codes[:, :1]).all()
    assert (codes_cost(codes[1:], HAND_COST) <= [0, 8, 9, 26, 27, 1e9]).all()
    with pytest.raises(ConfigError, match="budget"):
        uniform_codes(HAND_COST, np.ones((2, 2)))


def test_cost_and_error_helpers():
    codes = np.array([[0, 1, 3], [3, 3, 3]])
    assert codes_cost(codes, HAND_COST).tolist() == [12.0, 27.0]
    weights = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]])
    assert codes_error(codes, HAND_ERROR, weights).tolist() == [10 + 14 + 1.5, 0 + 0 + 0.5]
    with pytest.raises(ConfigError, match="codes must lie"):
        codes_cost(np.array([[0, 4, 0]]), HAND_COST)
    with pytest.raises(ConfigError, match="codes must have shape"):
        codes_cost(np.zeros((1, 2), int), HAND_COST)
    with pytest.raises(ConfigError, match="importance must have shape"):
        codes_error(codes, HAND_ERROR, np.ones((1, 3)))
