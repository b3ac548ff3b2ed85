"""The run configuration: pyproject defaults, checks in from_mapping, tiers, the CLI front door."""

import importlib
import time
import tomllib
from pathlib import Path

import pytest

from chord_fl.data.synthetic import synthetic_interactions
from chord_fl.errors import ConfigError
from chord_fl.federation.runconfig import RunConfig, fleet_from_setting
from chord_fl.federation.world import load_world
from chord_fl.tiers import DEFAULT_FLEET

ROOT = Path(__file__).resolve().parents[1]

TWO_TIERS = """
[[tier]]
name = "small"
share = 3
uplink_bps = 1e6
downlink_bps = 4e6
speed = 0.5
availability = 0.5
avg_bits = 2.0

[[tier]]
name = "big"
share = 1
uplink_bps = 1e7
downlink_bps = 4e7
speed = 2.0
availability = 1.0
memory_bytes = 500000
"""


def _tier(name: str, memory_bytes: int) -> str:
    return (
        f'[[tier]]\nname = "{name}"\nshare = 1.0\nuplink_bps = 1e6\ndownlink_bps = 1e6\n'
        f"speed = 1.0\navailability = 1.0\nmemory_bytes = {memory_bytes}\n"
    )


# -- pyproject ---------------------------------------------------------------------------------


def test_pyproject_app_config_matches_the_defaults_exactly():
    with open(ROOT / "pyproject.toml", "rb") as handle:
        app_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    defaults = RunConfig().to_mapping()
    assert sorted(app_config) == sorted(defaults)
    assert app_config == defaults
    # 1 == 1.0 in Python; Flower would hand an int to a float field, so types must match too.
    assert {key: type(value) for key, value in app_config.items()} == {
        key: type(value) for key, value in defaults.items()
    }
    assert RunConfig.from_mapping(app_config) == RunConfig()


def test_to_mapping_uses_kebab_case_and_round_trips():
    config = RunConfig(rounds=4, local_epochs=2, local_lr=0.01, run_name="x")
    mapping = config.to_mapping()
    assert mapping["local-epochs"] == 2 and mapping["run-name"] == "x"
    assert not any("_" in key for key in mapping)
    assert RunConfig.from_mapping(mapping) == config


# -- from_mapping ------------------------------------------------------------------------------


def test_unknown_key_is_rejected_and_the_known_keys_are_listed():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"roundz": 2})
    message = str(info.value)
    assert "roundz" in message
    for key in RunConfig().to_mapping():
        assert repr(key) in message


def test_snake_case_keys_are_unknown():
    with pytest.raises(ConfigError, match="local_epochs"):
        RunConfig.from_mapping({"local_epochs": 2})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rounds", "3"),
        ("rounds", True),
        ("local-epochs", False),
        ("negatives", 10.0),
        ("seed", None),
        ("fraction", "0.5"),
        ("fraction", True),
        ("dataset", 5),
        ("run-name", b"x"),
    ],
)
def test_wrong_types_are_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    assert repr(key) in str(info.value)


def test_int_is_accepted_for_a_float_field_and_converted():
    config = RunConfig.from_mapping({"fraction": 1, "round-timeout": 30, "node-wait": 0})
    assert config.fraction == 1.0 and type(config.fraction) is float
    assert config.round_timeout == 30.0 and type(config.round_timeout) is float
    assert config.node_wait == 0.0 and type(config.node_wait) is float


@pytest.mark.parametrize("fraction", [0, 0.0, -0.5, 1.0001, 2])
def test_fraction_outside_zero_one_is_rejected(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        RunConfig.from_mapping({"fraction": fraction})


@pytest.mark.parametrize("fraction", [1e-6, 0.5, 1])
def test_fraction_inside_zero_one_is_accepted(fraction):
    assert RunConfig.from_mapping({"fraction": fraction}).fraction == fraction


@pytest.mark.parametrize(
    ("values", "mentioned"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": -1}, "rounds"),
        ({"negatives": 0}, "negatives"),
        ({"local-epochs": 0}, "local-epochs"),
        ({"hypernet-epochs": 0}, "hypernet-epochs"),
        ({"hypernet-lr": 0.0}, "hypernet-lr"),
        ({"local-lr": 0.0}, "local-lr"),
        ({"round-timeout": -1.0}, "round-timeout"),
        ({"profile-window": -1}, "profile-window"),
        ({"node-wait": -0.5}, "node-wait"),
        ({"backbone": "bert4rec"}, "bert4rec"),
        ({"init": "zeros"}, "zeros"),
        ({"code-bits": "0,2,4"}, "(0, 2, 4)"),
        ({"code-bits": "0,2,x,8"}, "code-bits"),
        ({"code-bits": "0,4,2,8"}, "increasing"),
        ({"scales": "row"}, "row"),
        ({"select-margin": -1.0}, "select-margin"),
        ({"sensitivity-temperature": 0.0}, "sensitivity-temperature"),
        ({"importance-exponents": "1,x"}, "importance-exponents"),
        ({"importance-exponents": "1,0"}, "importance-exponents"),
    ],
)
def test_out_of_range_values_are_rejected(values, mentioned):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    assert mentioned in str(info.value)


@pytest.mark.parametrize(
    ("strategy", "ahead", "carries"),
    [
        ("chord", None, True),  # the default
        ("uniform", None, True),
        ("chord", False, False),
        ("fp32", True, False),  # its devices upload nothing to carry
        ("fedavg", True, False),
    ],
)
def test_reports_carry_uploads_only_where_devices_upload_and_profile_ahead_is_on(
    strategy, ahead, carries
):
    values = {"strategy": strategy} | ({} if ahead is None else {"profile-ahead": ahead})
    assert RunConfig.from_mapping(values).carries_uploads is carries


def test_known_backbones_and_inits_are_accepted():
    assert RunConfig.from_mapping({"backbone": "caser"}).backbone == "caser"
    assert RunConfig.from_mapping({"init": "random"}).init == "random"


# -- tiers -------------------------------------------------------------------------------------


def test_empty_tiers_is_the_built_in_fleet():
    assert RunConfig().fleet == DEFAULT_FLEET
    assert fleet_from_setting("") == DEFAULT_FLEET


def test_inline_toml_tiers_give_that_fleet():
    fleet = RunConfig.from_mapping({"tiers": TWO_TIERS}).fleet
    assert fleet.names == ("small", "big")
    assert fleet.shares.tolist() == pytest.approx([0.75, 0.25])
    small, big = fleet.tiers
    assert small.avg_bits == 2.0 and small.memory_bytes is None
    assert big.memory_bytes == 500000 and big.avg_bits is None
    assert big.downlink_bps == 4e7


def test_tiers_from_a_toml_file(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(TWO_TIERS)
    config = RunConfig.from_mapping({"tiers": str(path)})
    assert config.fleet == fleet_from_setting(TWO_TIERS)
    assert config.fleet.names == ("small", "big")


@pytest.mark.parametrize(
    "tiers",
    [
        '[[tier]]\nname = "a"\nshare = ',  # inline, not TOML
        '[[tier]]\nname = "a"\nshare = 1\n',  # inline TOML, missing keys
        TWO_TIERS.replace("avg_bits = 2.0", "avg_bits = 2.0\nmemory_bytes = 10"),  # both budgets
    ],
)
def test_malformed_inline_tiers_are_a_config_error(tiers):
    with pytest.raises(ConfigError):
        RunConfig.from_mapping({"tiers": tiers})


def test_malformed_tier_file_and_missing_file_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tier]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="not TOML"):
        RunConfig.from_mapping({"tiers": str(bad)})
    with pytest.raises(ConfigError, match="cannot read"):
        RunConfig.from_mapping({"tiers": str(tmp_path / "absent.toml")})


# -- load_world --------------------------------------------------------------------------------


@pytest.fixture
def tiny_csv(tmp_path):
    path = tmp_path / "tiny.csv"
    synthetic_interactions(num_users=12, num_items=40, seed=0).to_csv(path, index=False)
    return path


def _world_config(csv: Path, tmp_path: Path, tiers: str) -> RunConfig:
    return RunConfig.from_mapping(
        {
            "dataset": str(csv),
            "init": "random",
            "negatives": 10,
            "rounds": 2,
            "checkpoint-dir": str(tmp_path / "checkpoints"),
            "tiers": tiers,
        }
    )


def test_load_world_rejects_a_tier_below_the_all_pruned_floor(tiny_csv, tmp_path):
    config = _world_config(tiny_csv, tmp_path, _tier("too-small", 10))
    with pytest.raises(ConfigError) as info:
        load_world(config)
    message = str(info.value)
    assert "floor" in message and "too-small" in message


def test_load_world_accepts_a_tier_above_the_floor(tiny_csv, tmp_path):
    config = _world_config(tiny_csv, tmp_path, _tier("roomy", 10**9))
    world = load_world(config)
    assert world.devices == 12
    assert world.fleet.names == ("roomy",)
    assert world.budgets.shape == (12,) and (world.budgets > 10).all()
    assert world.negatives.shape == (12, 10)


def test_the_world_quantizes_with_the_configured_code_table_and_scales(tiny_csv, tmp_path):
    config = _world_config(tiny_csv, tmp_path, _tier("roomy", 10**9))
    shared = config.replace(code_bits="0,2,3,4", scales="tensor")
    default, world = load_world(config).prepared, load_world(shared).prepared
    assert default.table.bits == (0, 2, 4, 8) and default.channels.shared_scales == 0
    assert world.table.bits == (0, 2, 3, 4) and world.channels.shared_scales == 3
    assert config.setup.quantizer != shared.setup.quantizer  # so cached hypernetworks differ


# -- simulations.cli ---------------------------------------------------------------------------


@pytest.fixture
def sim_cli():
    return importlib.import_module("simulations.cli")


def test_parse_run_config_splits_pairs_and_literals(sim_cli):
    values = sim_cli.parse_run_config(["rounds=2 dataset='ml-1m'", "local-lr=0.01"])
    assert values == {"rounds": 2, "dataset": "ml-1m", "local-lr": 0.01}
    assert type(values["rounds"]) is int and type(values["local-lr"]) is float
    assert sim_cli.parse_run_config(['run-name="7"']) == {"run-name": "7"}
    assert sim_cli.parse_run_config([]) == {}


@pytest.mark.parametrize("pairs", [["rounds"], ["rounds=2 seed"], ["=3"]])
def test_parse_run_config_rejects_a_pair_without_key_or_equals(sim_cli, pairs):
    with pytest.raises(ConfigError):
        sim_cli.parse_run_config(pairs)


@pytest.mark.parametrize(("pair", "named"), [("roundz=2", "roundz"), ("rounds=0", "rounds")])
def test_simulate_with_a_bad_run_config_exits_2_before_any_work(
    sim_cli, monkeypatch, capsys, pair, named
):
    simulate_module = importlib.import_module("simulations.simulate")
    started = []
    monkeypatch.setattr(simulate_module, "simulate", lambda *a, **k: started.append(a))
    begin = time.perf_counter()
    code = sim_cli.main(["simulate", "--run-config", pair])
    elapsed = time.perf_counter() - begin
    captured = capsys.readouterr()
    assert code == 2
    assert named in captured.err and "error" in captured.err
    assert started == []
    assert elapsed < 5.0
