"""The headroom report's paired figures, which README's headroom tables quote, on rows whose
per-device scores are known: the share of the global-to-window gap, the gap's midpoint row and
"no gap" where the ceiling is not above `global` beyond noise."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from headroom_report import tables  # noqa: E402

DEVICES = 400


def _row(method: str, full: np.ndarray, sampled: np.ndarray) -> dict:
    return {
        "dataset": "toy",
        "backbone": "sasrec",
        "budget_bits": 2.5,
        "method": method,
        "avg_bits": 2.4,
        "full": {"ndcg@10": float(full.mean())},
        "sampled": {"ndcg@10": float(sampled.mean())},
        "full_per_device": full.tolist(),
        "sampled_per_device": sampled.tolist(),
    }


def _rows(window_gap: float, chord_share: float, sampled_share: float | None = None) -> list[dict]:
    """`global`, the window ceiling `window_gap` above it and `chord` at `chord_share` of that
    gap; under the sampled protocol the gap is twice as wide and chord's share `sampled_share`."""
    rng = np.random.default_rng(0)
    low = rng.uniform(0.1, 0.3, DEVICES)
    noise = rng.normal(0, 0.01, (4, DEVICES))
    shares = {
        "full": chord_share,
        "sampled": chord_share if sampled_share is None else sampled_share,
    }
    scores = {
        protocol: {
            "global": low + offset,
            "window": low + offset + gap + noise[2 * index],
            "chord": low + offset + shares[protocol] * gap + noise[2 * index + 1],
        }
        for index, (protocol, offset, gap) in enumerate(
            (("full", 0.0, window_gap), ("sampled", 0.2, 2 * window_gap))
        )
    }
    return [_row(m, scores["full"][m], scores["sampled"][m]) for m in ("global", "window", "chord")]


def _line(report: str, start: str) -> str:
    (line,) = [line for line in report.splitlines() if line.startswith(start)]
    return line


def test_the_share_and_the_midpoint_row_follow_the_per_device_scores():
    report = tables(_rows(window_gap=0.04, chord_share=0.75, sampled_share=0.4))
    # chord closes three quarters of the gap under full ranking, 40% under the sampled protocol...
    shares = _line(report, "| chord |").split("|")[-2].strip()
    full, sampled = (float(share.rstrip("%")) for share in shares.split(" / "))
    assert full == pytest.approx(75, abs=3) and sampled == pytest.approx(40, abs=3)
    # ...so it sits above the full gap's midpoint by a quarter of that gap, far beyond two
    # errors, and below the sampled gap's (twice as wide) by a tenth of it.
    cells = _line(report, "| the global-to-window gap's midpoint |").split("|")[2:4]
    (full_mean, full_rest), (sampled_mean, _) = (cell.strip().split(" ± ") for cell in cells)
    assert float(full_mean) == pytest.approx(0.25 * 0.04, abs=0.002)
    assert float(full_rest.split("(")[1].rstrip(")")) > 5
    assert float(sampled_mean) == pytest.approx(-0.1 * 0.08, abs=0.002)


def test_a_ceiling_within_noise_of_global_has_no_gap_to_close():
    report = tables(_rows(window_gap=0.0, chord_share=0.5))
    assert _line(report, "| chord |").split("|")[-2].strip() == "no gap / no gap"
    midpoint = _line(report, "| the global-to-window gap's midpoint |")
    assert midpoint.count("no gap") == 2


def test_a_method_below_the_midpoint_shows_a_negative_lead():
    report = tables(_rows(window_gap=0.04, chord_share=0.2))
    midpoint = _line(report, "| the global-to-window gap's midpoint |").split("|")[2]
    assert float(midpoint.split(" ± ")[0]) == pytest.approx(-0.3 * 0.04, abs=0.002)
