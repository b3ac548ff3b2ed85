"""Device-side refinement of the item table: the device re-spreads the bytes the cloud's codes
give the item table over its rows, by a sensitivity only it can compute.

Which item rows matter most for one device's ranking is decided by the few items its model will
rank highest and by the items of its own window (their rows are the encoder's input, when the
table is tied). A profile cannot say which items the window holds, so no cloud-side map from the
profile reaches the window ceiling (`benchmarks/sharpening.py`). The device holds the frozen fp32
weights and its window: one forward pass gives each row's sharpened sensitivity in closed form
(`chord_fl.sensitivity.output_row_sensitivity`), and the allocator, run over that one tensor with
the bytes the cloud's codes spent on it, gives the rows new codes. Every other tensor keeps the
cloud's codes, and the model never costs more than the cloud's codes did.
"""

from __future__ import annotations

import numpy as np

from chord_fl.errors import ConfigError
from chord_fl.quant.allocation import allocate
from chord_fl.quant.quantizer import PreparedModel
from chord_fl.sensitivity import SHARP_TEMPERATURE, output_row_sensitivity


def item_row_importance(
    prepared: PreparedModel, window: np.ndarray, temperature: float
) -> np.ndarray:
    """(rows,) the window's sharpened sensitivity of each item row from the scoring side, the
    window's own rows raised to the largest (they feed the encoder)."""
    rows = output_row_sensitivity(prepared.frozen, window, temperature)
    rows[np.asarray(window, dtype=np.int64)] = rows.max()
    return rows


def refine_item_rows(
    prepared: PreparedModel,
    codes: np.ndarray,
    window: np.ndarray,
    temperature: float = SHARP_TEMPERATURE,
) -> np.ndarray:
    """(C,) `codes` with the item table's rows re-allocated for `window` within the bytes the
    given codes spend on that table."""
    table = prepared.frozen.output_table
    group = prepared.channels.rows_group(table)
    if group is None:
        raise ConfigError(f"item-row refinement needs {table} quantized by rows")
    codes = np.asarray(codes)
    rows = group.codes
    cost = prepared.cost[rows]
    spent = np.take_along_axis(cost, codes[rows][:, None].astype(np.int64), axis=1).sum()
    importance = item_row_importance(prepared, window, temperature)[None, :]
    refined = codes.copy()
    refined[rows] = allocate(importance, prepared.errors[rows], cost, np.array([spent]))[0]
    return refined
