import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chord_fl.checkpoint import load_checkpoint, save_checkpoint
from chord_fl.data import make_split, pad_left, synthetic_dataset
from chord_fl.errors import ConfigError, DataError
from chord_fl.evaluation import evaluate_stages, target_ranks
from chord_fl.models import BACKBONES, LOSSES, Popularity, build_backbone
from chord_fl.models.dropout import dropout
from chord_fl.models.losses import chunked_cross_entropy
from chord_fl.train import TrainConfig, batches, evaluation_negatives, fit, learning_rate_factor

NUM_ITEMS = 50
SMALL = {"hidden": 16, "max_len": 12}


@pytest.fixture(params=sorted(BACKBONES))
def model(request):
    torch.manual_seed(0)
    return build_backbone(request.param, NUM_ITEMS, **SMALL).eval()


def test_forward_shapes(model):
    seqs = torch.randint(1, NUM_ITEMS + 1, (3, 12))
    assert model.encode(seqs).shape == (3, 16)
    assert model.score(seqs, torch.randint(1, NUM_ITEMS + 1, (3, 7))).shape == (3, 7)
    full = model.full_scores(seqs)
    assert full.shape == (3, NUM_ITEMS + 1)
    assert torch.isneginf(full[:, 0]).all() and torch.isfinite(full[:, 1:]).all()
    for loss in LOSSES:
        value = model.training_loss(torch.randint(0, NUM_ITEMS + 1, (3, 13)), loss, 8)
        assert value.dim() == 0 and torch.isfinite(value)


def test_a_sum_of_losses_is_the_sum_of_its_terms(model):
    model.eval()  # no dropout: each term sees the same encoding
    seqs = torch.randint(0, NUM_ITEMS + 1, (3, 13))

    def loss(name: str) -> torch.Tensor:
        torch.manual_seed(5)  # "bce" draws its negatives: the same ones each time
        return model.training_loss(seqs, name)

    torch.testing.assert_close(loss("ce+bce"), loss("ce") + loss("bce"))
    with pytest.raises(ConfigError, match="unknown loss 'ce\\+mse'"):
        model.training_loss(seqs, "ce+mse")


def test_chunked_cross_entropy_matches_the_whole_softmax(model):
    """The "ce" loss, computed in chunks with its gradients formed in the forward pass, against
    plain autograd through the whole (positions x items) logits."""
    model.eval()
    seqs = torch.randint(0, NUM_ITEMS + 1, (4, 13))

    def value_and_grads(loss_of_states):
        model.zero_grad()
        states, targets = model.training_states(seqs)
        value = loss_of_states(states, targets)
        (3 * value).backward()  # a scaled upstream gradient reaches every parameter
        return value, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    weight, bias = model.output_embeddings()
    for rows in (1, 7, 1024):  # a chunk of one row, chunks that do not divide the rows, one chunk
        chunked = value_and_grads(
            lambda states, targets, rows=rows: chunked_cross_entropy(
                states, weight, targets, bias, 0, rows
            )
        )
        whole = value_and_grads(lambda s, t: F.cross_entropy(model.full_scores_encoded(s), t))
        torch.testing.assert_close(chunked[0], whole[0])
        assert chunked[1].keys() == whole[1].keys() and len(whole[1]) > 2
        for name, grad in whole[1].items():
            torch.testing.assert_close(chunked[1][name], grad, msg=name)
    with torch.no_grad():
        states, targets = model.training_states(seqs)
        torch.testing.assert_close(
            chunked_cross_entropy(states, weight, targets, bias, 0, 5), whole[0]
        )


def test_chunked_cross_entropy_is_exact_where_a_target_is_all_but_impossible():
    """Logits hundreds apart: a softmax's target probability underflows to zero, and the loss
    must still be the log-sum-exp minus the target's logit, as in F.cross_entropy."""
    torch.manual_seed(3)
    states, weight = torch.randn(40, 8) * 30, torch.randn(20, 8) * 30
    targets = torch.randint(1, 20, (40,))
    whole = F.cross_entropy(
        torch.cat([torch.full((40, 1), float("-inf")), (states @ weight.T)[:, 1:]], 1), targets
    )
    assert whole > 100  # some targets sit far below the best item
    torch.testing.assert_close(chunked_cross_entropy(states, weight, targets), whole)


def test_bfloat16_cross_entropy_stays_near_float32(model):
    """`ce_dtype="bfloat16"` rounds the products and softmax, not the result: the loss and
    every gradient come back in float32 within bfloat16's rounding of the exact values."""
    seqs = torch.randint(0, NUM_ITEMS + 1, (4, 13))

    def value_and_grads(ce_dtype):
        model.zero_grad()
        value = model.training_loss(seqs, "ce", ce_dtype=ce_dtype)
        value.backward()
        return value, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    exact, rounded = value_and_grads("float32"), value_and_grads("bfloat16")
    assert rounded[0].dtype == torch.float32 and rounded[0] != exact[0]
    torch.testing.assert_close(rounded[0], exact[0], rtol=1e-2, atol=0)
    for name, grad in exact[1].items():
        assert rounded[1][name].dtype == torch.float32
        # relative to the gradient's size, plus a floor for those that are zero in exact
        # arithmetic (a key's bias does not change a softmax over keys)
        assert (rounded[1][name] - grad).norm() < 3e-2 * grad.norm() + 1e-5, name
    with pytest.raises(ConfigError, match="ce_dtype must be one of float32, bfloat16"):
        TrainConfig(ce_dtype="float16")
    with pytest.raises(ConfigError, match="applies to the ce loss, not 'sampled'"):
        TrainConfig(ce_dtype="bfloat16", loss="sampled")


def test_score_agrees_with_full_scores(model):
    seqs = torch.randint(1, NUM_ITEMS + 1, (2, 12))
    candidates = torch.tensor([[3, 9, 1], [50, 2, 7]])
    expected = model.full_scores(seqs).gather(1, candidates)
    torch.testing.assert_close(model.score(seqs, candidates), expected)


def test_left_padding_does_not_change_the_representation(model):
    items = torch.tensor([[4, 8, 15, 16, 23, 42]])
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), items], dim=1)
    torch.testing.assert_close(model.encode(items), model.encode(padded))


def test_windows_are_padded_only_to_the_longest_and_score_as_at_max_len(model):
    rng = np.random.default_rng(0)
    short = [rng.integers(1, NUM_ITEMS + 1, size=n) for n in (1, 3, 5)]
    assert model.pad_windows(short).shape == (3, 5)
    long = [*short, rng.integers(1, NUM_ITEMS + 1, size=20)]
    assert model.pad_windows(long).shape == (4, SMALL["max_len"])
    at_max_len = torch.from_numpy(pad_left(short, SMALL["max_len"]))
    torch.testing.assert_close(
        model.full_scores(model.pad_windows(short)), model.full_scores(at_max_len)
    )


def test_quantizable_tensors_are_real_parameters(model):
    params = dict(model.named_parameters())
    tensors = model.quantizable_tensors()
    assert "item_embedding.weight" in {t.name for t in tensors}
    assert "position_embedding.weight" not in {t.name for t in tensors}
    for tensor in tensors:
        assert tensor.name in params
        assert 0 <= tensor.channel_axis < params[tensor.name].dim()


def test_checkpoint_round_trip(model, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", model, {"dataset": "synthetic", "note": [1, 2]})
    loaded, meta = load_checkpoint(path)
    assert type(loaded) is type(model) and meta["note"] == [1, 2]
    seqs = torch.randint(1, NUM_ITEMS + 1, (2, 12))
    torch.testing.assert_close(loaded.full_scores(seqs), model.full_scores(seqs))


class NotAllowed:
    pass


def test_checkpoint_loading_is_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": NotAllowed(), "meta": {}, "state_dict": {}}, path)
    with pytest.raises(DataError, match="evil.pt"):
        load_checkpoint(path)
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="torn.pt"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unknown_names_are_listed():
    with pytest.raises(ConfigError, match="caser, sasrec|sasrec, caser"):
        build_backbone("gru4rec", NUM_ITEMS)
    with pytest.raises(ConfigError, match="known: .*hidden"):
        build_backbone("sasrec", NUM_ITEMS, hiden=8)


def test_full_ranking_leaves_out_seen_items():
    model = Popularity(5).fit([np.array([1, 1, 1, 2, 2, 3])])
    windows, targets = [np.array([1, 2])], np.array([3])
    # Item 3 is third by popularity; items 1 and 2 are already in the window.
    assert target_ranks(model, windows, targets, exclude_seen=False).tolist() == [2]
    assert target_ranks(model, windows, targets, exclude_seen=True).tolist() == [0]


def test_training_beats_popularity_on_synthetic_data():
    data = synthetic_dataset(seed=1)
    split = make_split(data, rounds=2)
    negatives = evaluation_negatives(split, 40, seed=0)
    config = TrainConfig(epochs=12, num_negatives=40, lr=3e-3, patience=12, seed=0)
    popularity = Popularity(data.num_items)
    fit(popularity, split, config, progress=False)
    baseline = evaluate_stages(popularity, split, [1, 2], negatives)["full"]["ndcg@10"]
    model = build_backbone("sasrec", data.num_items, hidden=32, max_len=40)
    result = fit(model, split, config, progress=False)
    trained = evaluate_stages(model, split, [1, 2], negatives)["full"]["ndcg@10"]
    assert result.best_epoch >= 1
    assert trained > 2 * baseline


def test_batches_by_length_cover_every_sample_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 200, size=1000)
    for by_length in (True, False):
        chosen = batches(lengths, 64, by_length, np.random.default_rng(1))
        assert sorted(np.concatenate(chosen).tolist()) == list(range(1000))
        padded = sum(len(batch) * lengths[batch].max() for batch in chosen)
        if by_length:
            assert padded < 1.1 * lengths.sum()
        else:
            assert padded > 1.5 * lengths.sum()


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = TrainConfig(schedule="cosine", warmup=0.1)
    factors = [learning_rate_factor(config, step, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.01
    constant = TrainConfig(schedule="constant")
    assert {learning_rate_factor(constant, step, 100) for step in range(100)} == {1.0}
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")


def test_fast_dropout_drops_at_its_rate_keeps_the_mean_and_repeats():
    x = torch.ones(400_000)
    torch.manual_seed(3)
    y = dropout(x, 0.3, training=True)
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.3, abs=0.003)  # about 4 standard errors
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / (1 - 0.3), rel=1e-4)]
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3, training=True), y)
    assert dropout(x, 0.3, training=False) is x
    assert torch.isfinite(dropout(x, 1 - 1e-9, training=True)).all()  # rounds below 1, not to it


def test_fast_dropout_passes_gradients_only_where_kept():
    x = torch.randn(1000, requires_grad=True)
    y = dropout(x, 0.5, training=True)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
    assert torch.allclose(x.grad[y != 0], torch.tensor(2.0))


def test_explicit_attention_equals_the_fused_one():
    """fast_dropout's attention path (taken while training with attention dropout) gives what
    scaled_dot_product_attention gives; here with a rate that rounds to no drops, so the two
    compare exactly (the masks themselves are the tests above)."""
    torch.manual_seed(0)
    seqs = pad_left([np.arange(1, 9), np.arange(3, 15)], 12)
    settings = {**SMALL, "heads": 2, "attention_dropout": 1e-9}  # rounds to no drops at all
    model = build_backbone("sasrec", NUM_ITEMS, **settings)
    fused = build_backbone("sasrec", NUM_ITEMS, **settings, fast_dropout=False)
    fused.load_state_dict(model.state_dict())
    states = model.train().encode(torch.from_numpy(seqs))
    assert torch.allclose(states, fused.eval().encode(torch.from_numpy(seqs)), atol=1e-5)
