import math

import numpy as np
import pytest

from chord_fl.errors import ConfigError
from chord_fl.tiers import (
    DEFAULT_FLEET,
    DEFAULT_TIERS,
    Fleet,
    Tier,
    assign_tiers,
    budget_bytes,
    fleet_to_toml,
    load_fleet,
    tier_counts,
    transfer_seconds,
)

GOOD = {
    "name": "phone",
    "share": 1.0,
    "uplink_bps": 1e6,
    "downlink_bps": 5e6,
    "speed": 1.0,
    "availability": 0.5,
    "avg_bits": 3.0,
}


def tier(**changes) -> Tier:
    return Tier(**{**GOOD, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "name"),
        ({"share": 0}, "share must be > 0"),
        ({"share": float("nan")}, "share must be finite"),
        ({"uplink_bps": -1.0}, "uplink_bps must be > 0"),
        ({"downlink_bps": 0}, "downlink_bps must be > 0"),
        ({"speed": 0.0}, "speed must be > 0"),
        ({"availability": 0.0}, r"availability must be in \(0, 1\]"),
        ({"availability": 1.5}, r"availability must be in \(0, 1\]"),
        ({"speed": "fast"}, "speed must be a number"),
        ({"share": True}, "share must be a number"),
        ({"memory_bytes": 1000}, "exactly one of avg_bits and memory_bytes"),
        ({"avg_bits": None}, "exactly one of avg_bits and memory_bytes"),
        ({"avg_bits": -1.0}, "avg_bits must be in"),
        ({"avg_bits": None, "memory_bytes": 2.5}, "memory_bytes must be an integer"),
        ({"avg_bits": None, "memory_bytes": -1}, "memory_bytes must be an integer"),
    ],
)
def test_tier_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        tier(**changes)


def test_tier_errors_name_the_tier():
    with pytest.raises(ConfigError, match="tier 'slow'"):
        tier(name="slow", speed=-1)


def test_fleet_normalises_shares_and_rejects_repeats():
    fleet = Fleet((tier(name="a", share=1), tier(name="b", share=3)))
    np.testing.assert_allclose(fleet.shares, [0.25, 0.75])
    assert fleet.names == ("a", "b")
    assert isinstance(fleet.tiers[0].share, float)
    assert Fleet(fleet.tiers) == fleet  # normalising twice changes nothing
    with pytest.raises(ConfigError, match="repeated: a"):
        Fleet((tier(name="a"), tier(name="b"), tier(name="a")))
    with pytest.raises(ConfigError, match="at least one tier"):
        Fleet(())


def test_default_fleet_spans_low_end_to_flagship():
    assert len(DEFAULT_TIERS) == 4 and DEFAULT_FLEET.tiers == DEFAULT_TIERS
    assert math.isclose(sum(DEFAULT_FLEET.shares), 1.0)
    assert 2.0 <= DEFAULT_FLEET.mean_bits <= 6.0
    for field in ("avg_bits", "uplink_bps", "downlink_bps", "speed", "availability"):
        values = [getattr(t, field) for t in DEFAULT_TIERS]
        assert values == sorted(values) and values[0] < values[-1], field
    assert all(t.uplink_bps < t.downlink_bps for t in DEFAULT_TIERS)


def test_mean_bits_is_none_when_a_tier_is_in_bytes():
    fleet = Fleet((tier(name="a"), tier(name="b", avg_bits=None, memory_bytes=10)))
    assert fleet.mean_bits is None


def test_toml_round_trip(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(fleet_to_toml(DEFAULT_FLEET), encoding="utf-8")
    assert load_fleet(path) == DEFAULT_FLEET
    assert load_fleet(str(path)) == DEFAULT_FLEET
    mixed = Fleet((tier(name='say "hi"', share=2), tier(name="b", avg_bits=None, memory_bytes=7)))
    path.write_text(fleet_to_toml(mixed), encoding="utf-8")
    assert load_fleet(path) == mixed


def test_hand_written_toml(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(
        """
[[tier]]
name = "budget"
share = 3
uplink_bps = 1_000_000
downlink_bps = 4_000_000
speed = 0.5
availability = 0.6
memory_bytes = 250_000

[[tier]]
name = "premium"
share = 1
uplink_bps = 10e6
downlink_bps = 50e6
speed = 3
availability = 1
avg_bits = 8
""",
        encoding="utf-8",
    )
    fleet = load_fleet(path)
    low, high = fleet.tiers
    assert fleet.names == ("budget", "premium")
    assert (low.share, high.share) == (0.75, 0.25)
    assert low.memory_bytes == 250_000 and low.avg_bits is None
    assert high.avg_bits == 8.0 and isinstance(high.speed, float)


def test_load_from_a_mapping():
    fleet = load_fleet({"tier": [GOOD, {**GOOD, "name": "other", "share": 3.0}]})
    assert fleet.names == ("phone", "other")
    np.testing.assert_allclose(fleet.shares, [0.25, 0.75])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tier": [GOOD], "tiers": []}, r"unknown fleet keys \['tiers'\]; known: \['tier'\]"),
        ({"tier": [{**GOOD, "ram": 4}]}, r"tier 'phone': unknown keys \['ram'\]; known: .*speed"),
        ({"tier": [{k: v for k, v in GOOD.items() if k != "speed"}]}, "tier 'phone': missing"),
        ({"tier": [{k: v for k, v in GOOD.items() if k != "name"}]}, r"tier #0: missing .*name"),
        ({"tier": []}, "non-empty list"),
        ({}, "non-empty list"),
        ({"tier": GOOD}, "non-empty list"),
        ({"tier": [GOOD, 3]}, "tier 1 must be a table"),
    ],
)
def test_load_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        load_fleet(data)


def test_load_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_fleet(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[tier]\nname = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not TOML"):
        load_fleet(broken)


def test_tier_counts_are_exact_largest_remainders():
    # Quotas 2.1, 2.45, 1.75, 0.7: floors 2 2 1 0, the two seats left go to .75 and .7.
    assert tier_counts(DEFAULT_FLEET, 7).tolist() == [2, 2, 2, 1]
    assert tier_counts(DEFAULT_FLEET, 0).tolist() == [0, 0, 0, 0]
    for n in range(1, 300):
        counts = tier_counts(DEFAULT_FLEET, n)
        assert counts.sum() == n
        assert (np.abs(counts - DEFAULT_FLEET.shares * n) < 1).all()
    even = Fleet((tier(name="a"), tier(name="b"), tier(name="c")))
    assert tier_counts(even, 2).tolist() == [1, 1, 0]  # ties go to the earlier tier


def test_assign_tiers_is_seeded_and_exact():
    first = assign_tiers(DEFAULT_FLEET, 1000, seed=5)
    assert first.dtype == np.int64 and first.shape == (1000,)
    np.testing.assert_array_equal(first, assign_tiers(DEFAULT_FLEET, 1000, seed=5))
    other = assign_tiers(DEFAULT_FLEET, 1000, seed=6)
    assert not np.array_equal(first, other)
    expected = tier_counts(DEFAULT_FLEET, 1000)
    assert np.bincount(first, minlength=4).tolist() == expected.tolist() == [300, 350, 250, 100]
    assert np.bincount(other, minlength=4).tolist() == expected.tolist()
    assert assign_tiers(DEFAULT_FLEET, 0, seed=0).shape == (0,)
    with pytest.raises(ConfigError, match="num_devices"):
        assign_tiers(DEFAULT_FLEET, -1, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        assign_tiers(DEFAULT_FLEET, 5, seed=None)


def test_budget_bytes():
    assert budget_bytes(tier(avg_bits=2.0), fixed_bytes=100, weights=10) == 100 + 3  # 20 bits
    assert budget_bytes(tier(avg_bits=3.0), fixed_bytes=0, weights=8) == 3
    assert budget_bytes(tier(avg_bits=2.1), fixed_bytes=0, weights=80) == 21  # not 22
    assert budget_bytes(tier(avg_bits=6.0), fixed_bytes=5, weights=0) == 5
    in_bytes = tier(avg_bits=None, memory_bytes=4096)
    assert budget_bytes(in_bytes, fixed_bytes=10**9, weights=10**9) == 4096
    for name, args in (("fixed_bytes", (-1, 10)), ("weights", (0, 2.5))):
        with pytest.raises(ConfigError, match=name):
            budget_bytes(tier(), *args)


def test_transfer_seconds():
    assert transfer_seconds(1_000_000, 8e6) == pytest.approx(1.0)
    assert transfer_seconds(0, 1.0) == 0.0
    with pytest.raises(ConfigError, match="bps"):
        transfer_seconds(10, 0)
    with pytest.raises(ConfigError, match="num_bytes"):
        transfer_seconds(-1, 1e6)
