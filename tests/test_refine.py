"""Device-side refinement of the item table: its row importance against the exact expected
sensitivity, and codes that never cost more than the cloud's."""

import numpy as np
import pytest

from chord_fl.errors import ConfigError
from chord_fl.models import seeded_backbone
from chord_fl.quant.allocation import allocate
from chord_fl.quant.budget import coded_bytes
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.refine import item_row_importance, refine_item_rows
from chord_fl.sensitivity import expected_sensitivity

NUM_ITEMS = 40
WINDOW = np.array([3, 17, 5, 22])


@pytest.fixture(scope="module", params=["sasrec", "caser"])
def prepared(request):
    model = seeded_backbone(request.param, NUM_ITEMS, seed=2, hidden=8, max_len=6).eval()
    return PreparedModel(model)


def _item_table(prepared):
    return next(g for g in prepared.channels.groups if g.name == prepared.frozen.output_table)


def test_row_importance_is_the_exact_sharpened_sensitivity_outside_the_window(prepared):
    rows = item_row_importance(prepared, WINDOW, temperature=0.3)
    exact = expected_sensitivity(
        prepared.frozen, prepared.channels, [WINDOW], samples=None, temperature=0.3
    )[0, _item_table(prepared).codes]
    outside = np.ones(NUM_ITEMS + 1, dtype=bool)
    outside[WINDOW] = False
    outside[0] = False  # padding
    np.testing.assert_allclose(rows[outside], exact[outside], rtol=1e-4)
    assert np.all(rows[WINDOW] == rows.max())


def test_refined_codes_cost_no_more_and_touch_only_the_item_table(prepared):
    channels = prepared.channels
    rng = np.random.default_rng(0)
    left = 0.5 * prepared.cost[:, -1].sum()  # half of what every channel at its widest costs
    codes = allocate(rng.random((1, channels.channels)), prepared.errors, prepared.cost, [left])[0]
    refined = refine_item_rows(prepared, codes, WINDOW)
    rows = _item_table(prepared).codes
    outside_table = np.ones(channels.channels, dtype=bool)
    outside_table[rows] = False
    np.testing.assert_array_equal(refined[outside_table], codes[outside_table])
    assert not np.array_equal(refined[rows], codes[rows])  # random importances: it re-spreads
    before, after = coded_bytes(channels, prepared.table, np.stack([codes, refined]))
    assert after <= before
    # The window's rows come first: with bytes for them, none of them is pruned.
    assert np.all(refined[rows][WINDOW] > 0)


def test_refinement_needs_the_item_table_by_rows():
    model = seeded_backbone("sasrec", NUM_ITEMS, seed=2, hidden=8, max_len=6).eval()
    by_columns = PreparedModel(model, embedding_axis=1)
    codes = np.zeros(by_columns.channels.channels, dtype=np.uint8)
    with pytest.raises(ConfigError, match="item_embedding"):
        refine_item_rows(by_columns, codes, WINDOW)
