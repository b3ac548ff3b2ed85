import json

import torch

from chord_fl.checkpoint import load_checkpoint
from chord_fl.cli import main
from chord_fl.data import synthetic_interactions


def test_pretrain_then_hypernet_on_a_csv_file(tmp_path, capsys):
    csv = tmp_path / "clicks.csv"
    synthetic_interactions(num_users=60, num_items=300, seed=4).to_csv(csv, index=False)
    backbone = tmp_path / "backbone.pt"
    common = ["--dataset", str(csv), "--json", "--no-progress"]
    code = main(
        [
            "pretrain",
            *common,
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--max-len",
            "20",
            "--out",
            str(backbone),
        ]  # format: skip
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["users"] == 60 and report["epochs_run"] == 2
    assert set(report["test"]) == {"full", "sampled"}
    model, meta = load_checkpoint(backbone)
    assert model.num_items == report["items"] and meta["dataset"] == str(csv)

    hypernet = tmp_path / "hypernet.pt"
    code = main(
        [
            "hypernet",
            *common,
            "--checkpoint",
            str(backbone),
            "--epochs",
            "1",
            "--out",
            str(hypernet),
        ]  # format: skip
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [h["epoch"] for h in report["history"]] == [0, 1]
    assert report["test_round_1"]["model_bytes"] <= report["test_round_1"]["budget_bytes"]
    saved = torch.load(hypernet, weights_only=True)
    assert saved["model"]["hypernet"]["rank"] >= 1


def test_errors_exit_non_zero_with_a_message(tmp_path, capsys):
    assert main(["pretrain", "--dataset", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    csv = tmp_path / "clicks.csv"
    synthetic_interactions(num_users=20, seed=1).to_csv(csv, index=False)
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"not a checkpoint")
    assert main(["hypernet", "--dataset", str(csv), "--checkpoint", str(torn)]) == 2
    assert "torn.pt" in capsys.readouterr().err


def test_pretraining_twice_with_one_seed_gives_one_backbone(tmp_path):
    """The backbone's initial weights come from the training seed, not from whatever the process's
    random generator holds (before, every `flwr run` from scratch trained a different model)."""
    from chord_fl.pretrain import pretrain
    from chord_fl.train import TrainConfig

    csv = tmp_path / "clicks.csv"
    synthetic_interactions(num_users=40, num_items=100, seed=2).to_csv(csv, index=False)
    states = []
    for run in range(2):
        torch.rand(run + 1)  # a process whose generator has moved on
        out = tmp_path / f"backbone-{run}.pt"
        config = TrainConfig(epochs=1, num_negatives=10)
        pretrain(str(csv), "sasrec", None, 1, config, {"hidden": 16}, out, progress=False)
        states.append(load_checkpoint(out)[0].state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])


def test_the_default_input_length_covers_99_percent_of_histories(tmp_path, capsys):
    """Without --max-len a backbone's input length comes from the training histories (their 99th
    percentile, at most the backbone's 200, never below Caser's window), and the checkpoint
    records it; a given length wins."""
    import numpy as np

    from chord_fl.data import load_dataset, make_split
    from chord_fl.experiment import Setup, load_backbone
    from chord_fl.pretrain import pretrain, with_data_length
    from chord_fl.train import TrainConfig

    csv = tmp_path / "clicks.csv"
    synthetic_interactions(num_users=80, num_items=100, seed=3).to_csv(csv, index=False)
    lengths = [len(h) for h in make_split(load_dataset(str(csv)), 1).histories()]
    expected = int(np.ceil(np.percentile(lengths, 99)))
    assert expected < 200  # the backbones' own default
    config = TrainConfig(epochs=1, num_negatives=10)
    out = tmp_path / "backbone.pt"
    report = pretrain(str(csv), "sasrec", None, 1, config, {"hidden": 16}, out, progress=False)
    model, meta = load_checkpoint(out)
    assert model.max_len == expected == report["max_len"] == meta["max_len"]
    assert model.position_embedding.num_embeddings == expected
    assert main(["data", "--dataset", str(csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["default_max_len"] == expected
    seeded = load_backbone(Setup(str(csv), init="random"), make_split(load_dataset(str(csv)), 1))
    assert seeded.max_len == expected  # a randomly initialised backbone follows the data too

    long = [np.arange(300)] * 10
    assert with_data_length("sasrec", long, {})["max_len"] == 200
    assert with_data_length("sasrec", long, {"max_len": 500})["max_len"] == 500
    short = [np.arange(3)] * 10
    assert with_data_length("caser", short, {})["max_len"] == 5  # its default window
    assert with_data_length("caser", short, {"window": 7})["max_len"] == 7
