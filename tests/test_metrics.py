import numpy as np
import pytest
import torch

from chord_fl.metrics import (
    mean_and_standard_error,
    mean_metrics,
    per_user_metrics,
    pessimistic_ranks,
)


def test_ranks_count_ties_against_the_target():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # target best -> rank 0
            [0.5, 0.5, 0.5, 0.1],  # two ties -> rank 2
            [0.1, 0.2, 0.3, 0.4],  # target worst -> rank 3
            [0.5, float("-inf"), 0.7, float("-inf")],  # excluded items never count -> rank 1
        ]
    )
    ranks = pessimistic_ranks(scores, scores[:, 0])
    assert ranks.tolist() == [0, 2, 3, 1]


def test_hit_rate_and_ndcg_by_hand():
    ranks = np.array([0, 1, 4, 5, 9, 10])
    metrics = per_user_metrics(ranks)
    assert metrics["hr@5"].tolist() == [1, 1, 1, 0, 0, 0]
    assert metrics["hr@10"].tolist() == [1, 1, 1, 1, 1, 0]
    expected_ndcg10 = [1.0, 1 / np.log2(3), 1 / np.log2(6), 1 / np.log2(7), 1 / np.log2(11), 0.0]
    np.testing.assert_allclose(metrics["ndcg@10"], expected_ndcg10)
    np.testing.assert_allclose(metrics["ndcg@5"], [*expected_ndcg10[:3], 0, 0, 0])
    means = mean_metrics(ranks)
    assert means["hr@10"] == pytest.approx(5 / 6)
    assert means["ndcg@10"] == pytest.approx(np.mean(expected_ndcg10))
    assert list(means) == ["hr@5", "hr@10", "ndcg@5", "ndcg@10"]


def test_mean_and_standard_error():
    assert mean_and_standard_error([]) == (None, None)
    assert mean_and_standard_error([0.25]) == (0.25, None)
    mean, error = mean_and_standard_error([0.05, -0.075])
    assert mean == pytest.approx(-0.0125) and error == pytest.approx(0.0625)
