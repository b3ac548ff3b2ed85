"""Shards: which users each simulation serves, and merging shard runs into one run directory."""

import json

import pytest

from chord_fl.errors import ConfigError
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.runlog import CLIENT_COLUMNS, RunLog
from chord_fl.federation.shards import merge_shards, parse_shard


@pytest.mark.parametrize("devices,count", [(10, 3), (943, 4), (7, 7), (5, 8)])
def test_shards_serve_every_user_once(devices, count):
    served = []
    for index in range(count):
        config = RunConfig(shard=f"{index}/{count}")
        users = list(config.users(devices))
        assert users == [config.user_of(p) for p in range(len(users))]
        served += users
    assert sorted(served) == list(range(devices))


def test_an_unsharded_run_serves_everyone_under_its_own_partitions():
    config = RunConfig()
    assert list(config.users(5)) == [0, 1, 2, 3, 4] and config.user_of(3) == 3


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "1/2/3", "0/0"])
def test_a_malformed_shard_is_a_config_error(text):
    with pytest.raises(ConfigError, match="shard"):
        RunConfig.from_mapping({"shard": text})


def test_shard_runs_get_their_own_directory_under_the_run():
    whole = RunConfig(run_name="big").run_dir
    assert RunConfig(run_name="big", shard="1/4").run_dir == whole / "shard-1-of-4"
    assert parse_shard("") == (0, 1)


def _finished_shard(root, shard: str, **config) -> RunConfig:
    run = RunConfig(output_dir=str(root), run_name="big", shard=shard)
    log = RunLog(run.run_dir, fresh=True)
    log.write_config({**run.to_mapping(), **config})
    log.meta = {"strategy": "chord", "dataset": "d", "backbone": "sasrec", "master": "fp32"}
    log.meta["devices"] = 1
    log.append_round({"round": 1, "wall_s": 2.0, "server_rss_mib": 10.0})
    index = parse_shard(shard)[0]
    row = dict.fromkeys(CLIENT_COLUMNS, "")
    log.append_clients([{**row, "round": 1, "partition": index, "ndcg@10": index, "status": "ok"}])
    log.write_summary({"wall_s": 3.0, "rounds_wall_s": 2.0})
    return run


def test_merging_adds_times_and_refuses_shards_of_other_runs(tmp_path):
    dirs = [_finished_shard(tmp_path, f"{i}/3").run_dir for i in range(3)]
    summary = merge_shards(dirs, dirs[0].parent)
    assert summary["devices"] == 3 and summary["wall_s"] == 9.0
    assert summary["rounds"][0]["wall_s"] == 6.0 and summary["rounds"][0]["devices"] == 3
    assert summary["rounds"][0]["ndcg@10"] == 1.0  # the mean of 0, 1 and 2
    assert json.loads((dirs[0].parent / "config.json").read_text())["shards"] == 3
    with pytest.raises(ConfigError, match="once each"):
        merge_shards(dirs[:2], tmp_path / "out")
    other = _finished_shard(tmp_path / "other", "2/3", seed=5).run_dir
    with pytest.raises(ConfigError, match=r"\['seed'\] differ"):
        merge_shards([*dirs[:2], other], tmp_path / "out")
    (dirs[1] / "summary.json").write_text(json.dumps({"devices": 1}))
    with pytest.raises(ConfigError, match="did not finish"):
        merge_shards(dirs, tmp_path / "out")
    with pytest.raises(ConfigError, match="missing"):
        merge_shards([*dirs[:2], tmp_path / "nowhere"], tmp_path / "out")


def test_the_merge_command_writes_the_run_beside_its_shards(tmp_path, capsys):
    from simulations.cli import main

    dirs = [str(_finished_shard(tmp_path, f"{i}/2").run_dir) for i in range(2)]
    assert main(["merge", *dirs]) == 0
    assert "2 devices" in capsys.readouterr().out
    assert json.loads((tmp_path / "big" / "summary.json").read_text())["devices"] == 2
    assert main(["merge", dirs[0]]) != 0
    assert "once each" in capsys.readouterr().err
