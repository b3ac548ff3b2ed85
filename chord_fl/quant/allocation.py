"""Per-device precision codes under a memory budget: a greedy multiple-choice knapsack.

For device d the cloud picks one code q_c per channel to minimise
``sum_c importance[d, c] * error[c, q_c]`` subject to ``sum_c cost[c, q_c] <= budget[d]``.

Each channel's codes are reduced once to the upper convex hull of ``(cost, -error)``, a chain of
upgrade steps of decreasing error reduction per byte. A device takes steps of all channels in
decreasing efficiency ``importance * reduction / delta_cost`` (ties: lower channel, then earlier
step) and stops at the first step that does not fit. Because the taken steps are a prefix of one
fixed order per device, more budget never lowers a code and the answer is deterministic.

The prefix is found without sorting: a radix select over the efficiencies' float64 bit patterns
(order-preserving for non-negative values) walks down cost histograms per device, narrowing the
key range 1024-fold in the first round and 64-fold in each later one, then breaks the last tie by
channel and step. Efficiencies are compared
on their top 32 bits (relative precision ~1e-6); closer values count as ties.
"""

from __future__ import annotations

import numpy as np

from chord_fl.errors import ConfigError

__all__ = ["allocate", "codes_cost", "codes_error", "uniform_codes"]

_LOG_BUCKETS = 10  # first round, over every step of a device
_BUCKETS = 1 << _LOG_BUCKETS
_LOG_FINE = 6  # later rounds, over the few steps left in the boundary bucket
_FINE = 1 << _LOG_FINE
_CHUNK_ELEMENTS = 1 << 17  # devices x steps per chunk: keeps the working arrays in cache


def allocate(
    importance: np.ndarray, error: np.ndarray, cost: np.ndarray, budget: np.ndarray
) -> np.ndarray:
    """Greedy codes (D, C) uint8 for importances (D, C), error and cost (C, Q), budgets (D,).

    Steps with zero gain (zero importance or no error reduction) are never taken. Costs are
    bytes; with whole numbers every running sum is exact, so the budget holds to the byte.
    """
    error, cost = _check_tables(error, cost)
    num_channels = cost.shape[0]
    importance = _as_float(importance, "importance")
    if importance.ndim != 2 or importance.shape[1] != num_channels:
        raise ConfigError(
            f"importance must have shape (devices, {num_channels}), got {importance.shape}"
        )
    if importance.size and not importance.max() < np.inf:  # NaN fails this too
        raise ConfigError("importance must be finite and >= 0 (found NaN or inf)")
    if np.signbit(importance).any():
        if (importance < 0).any():
            raise ConfigError("importance must be finite and >= 0 (found a negative)")
        importance = importance + 0.0  # -0.0 would give a negative key
    budget = _check_budget(budget, importance.shape[0])
    floor = float(cost[:, 0].sum())
    short = floor - budget
    if (short > 0).any():
        bad = np.flatnonzero(short > 0)
        first = int(bad[0])
        raise ConfigError(
            f"device {first}: budget {budget[first]:g} bytes is {short[first]:g} bytes short of "
            f"the all-pruned floor ({floor:g} bytes); {bad.size} device(s) infeasible"
        )

    table, slope, delta = _hull(error, cost)
    num_devices = importance.shape[0]
    num_steps = slope.shape[1]
    codes = np.empty((num_devices, num_channels), dtype=np.uint8)
    codes[:] = table[:, 0]
    if num_steps == 0 or num_channels == 0:
        return codes
    # The floor is subtracted so the greedy spends only what is left above all-pruned.
    left = budget - floor
    # Steps are laid out step-major (s * C + c) so the per-device products stream contiguously;
    # `rank` restores the channel-then-step tie order.
    slope_t = np.ascontiguousarray(slope.T)
    delta_t = delta.T.ravel()
    width = delta_t.size
    rank = (np.arange(num_channels)[None, :] * num_steps + np.arange(num_steps)[:, None]).ravel()
    increments = np.diff(table.astype(np.int64), axis=1).T.astype(np.uint8)  # (S, C)
    chunk = max(1, _CHUNK_ELEMENTS // width)
    tiled_delta = np.tile(delta_t, min(chunk, num_devices))
    for start in range(0, num_devices, chunk):
        stop = min(start + chunk, num_devices)
        rows = stop - start
        eff = importance[start:stop, None, :] * slope_t[None]
        keys = _keys(eff.reshape(rows, width))
        threshold, first_out = _select(
            keys, delta_t, tiled_delta[: rows * width], rank, left[start:stop]
        )
        threshold = threshold.astype(np.int32)[:, None]
        taken = keys > threshold
        taken |= (keys == threshold) & (rank[None, :] < first_out[:, None])
        taken = taken.reshape(rows, num_steps, num_channels)
        block = codes[start:stop]
        for step in range(num_steps):
            block += taken[:, step] * increments[step]
    return codes


def codes_cost(codes: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Bytes (D,) the channels take on each device under codes (D, C)."""
    cost = _as_float(cost, "cost")
    codes = _check_codes(codes, cost)
    return cost[np.arange(cost.shape[0]), codes].sum(axis=1)


def codes_error(codes: np.ndarray, error: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Importance-weighted squared error (D,) of codes (D, C)."""
    error = _as_float(error, "error")
    codes = _check_codes(codes, error)
    importance = _as_float(importance, "importance")
    if importance.shape != codes.shape:
        raise ConfigError(f"importance must have shape {codes.shape}, got {importance.shape}")
    return (importance * error[np.arange(error.shape[0]), codes]).sum(axis=1)


def uniform_codes(cost: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """The uniform comparator (D, C): the highest single code at which all channels fit, else 0."""
    cost = _as_float(cost, "cost")
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise ConfigError(f"cost must have shape (channels, codes >= 1), got {cost.shape}")
    budget = _as_float(budget, "budget")
    if budget.ndim != 1:
        raise ConfigError(f"budget must have shape (devices,), got {budget.shape}")
    totals = cost.sum(axis=0)
    fits = totals[None, :] <= budget[:, None]
    # Highest fitting code; totals need not be monotone if cost is not, so no searchsorted.
    top = np.where(fits.any(axis=1), cost.shape[1] - 1 - fits[:, ::-1].argmax(axis=1), 0)
    return np.repeat(top.astype(np.uint8)[:, None], cost.shape[0], axis=1)


def _as_float(array: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be numeric: {exc}") from exc


def _check_tables(error: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    error = _as_float(error, "error")
    cost = _as_float(cost, "cost")
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise ConfigError(f"cost must have shape (channels, codes >= 1), got {cost.shape}")
    if cost.shape[1] > 256:
        raise ConfigError(f"at most 256 codes fit a uint8 code, got {cost.shape[1]}")
    if error.shape != cost.shape:
        raise ConfigError(f"error must have the shape of cost {cost.shape}, got {error.shape}")
    if not np.isfinite(cost).all() or (cost < 0).any():
        raise ConfigError("cost must be finite and >= 0")
    if (np.diff(cost, axis=1) < 0).any():
        raise ConfigError("cost must be non-decreasing in the code")
    if not np.isfinite(error).all() or (error < 0).any():
        raise ConfigError("error must be finite and >= 0")
    return error, cost


def _check_budget(budget: np.ndarray, num_devices: int) -> np.ndarray:
    budget = _as_float(budget, "budget")
    if budget.shape != (num_devices,):
        raise ConfigError(f"budget must have shape ({num_devices},), got {budget.shape}")
    if np.isnan(budget).any():
        raise ConfigError("budget must not be NaN")
    return budget


def _check_codes(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    if table.ndim != 2:
        raise ConfigError(f"table must have shape (channels, codes), got {table.shape}")
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != table.shape[0]:
        raise ConfigError(f"codes must have shape (devices, {table.shape[0]}), got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= table.shape[1]):
        raise ConfigError(f"codes must lie in [0, {table.shape[1]})")
    return codes.astype(np.intp)


def _hull(error: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upgrade chains per channel: code after k steps (C, S+1), slope and delta cost (C, S).

    Padding steps past a channel's last hull vertex have slope 0 and delta 0.
    """
    num_channels, num_codes = cost.shape
    rows = np.arange(num_channels)
    codes = np.arange(num_codes)
    # Codes that cost no more than pruning are free: start at the lowest-error one.
    free = cost == cost[:, :1]
    current = np.where(free, error, np.inf).argmin(axis=1)
    steps = num_codes - 1
    table = np.empty((num_channels, steps + 1), dtype=np.uint8)
    table[:, 0] = current
    slope = np.zeros((num_channels, steps))
    delta = np.zeros((num_channels, steps))
    for step in range(steps):
        d_cost = cost - cost[rows, current][:, None]
        gain = error[rows, current][:, None] - error
        ok = (codes[None, :] > current[:, None]) & (d_cost > 0) & (gain > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ok, gain / np.where(ok, d_cost, 1.0), -1.0)
        # Gift wrapping: the steepest next point is the next upper-hull vertex (first on ties).
        best = ratio.argmax(axis=1)
        valid = ok.any(axis=1)
        # Capped so that a zero importance times a slope is 0, never NaN.
        step_slope = np.minimum(np.where(valid, ratio[rows, best], 0.0), np.finfo(np.float64).max)
        if step:
            # Rounding must not let a later step look better than an earlier one.
            step_slope = np.minimum(step_slope, slope[:, step - 1])
        slope[:, step] = step_slope
        delta[:, step] = np.where(valid, d_cost[rows, best], 0.0)
        current = np.where(valid, best, current)
        table[:, step + 1] = current
    return table, slope, delta


def _keys(eff: np.ndarray) -> np.ndarray:
    """Order-preserving int32 keys from non-negative float64: the top 32 bits of the pattern."""
    return (np.ascontiguousarray(eff).view(np.int64) >> 32).astype(np.int32)


def _bit_length(values: np.ndarray) -> np.ndarray:
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


def _select(
    keys: np.ndarray, delta: np.ndarray, tiled_delta: np.ndarray, rank: np.ndarray, budget
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the longest prefix of (key desc, rank asc) over keys > 0 whose delta fits.

    Returns (threshold, first_out): a column is taken iff its key > threshold, or key ==
    threshold and its rank < first_out.
    """
    rows_n, width = keys.shape
    hi = keys.max(axis=1).astype(np.int64)
    # Unsigned wrap-around turns key 0 into the largest value, so this is the least positive key.
    lo = (keys.view(np.uint32) - np.uint32(1)).min(axis=1).astype(np.int64) + 1
    empty = lo > hi  # no positive key: nothing to take
    lo[empty], hi[empty] = 1, 0
    left = np.asarray(budget, dtype=np.float64).copy()
    threshold = np.zeros(rows_n, dtype=np.int64)
    first_out = np.zeros(rows_n, dtype=np.int64)
    open_ = ~empty

    # Round one on the dense block; keys of 0 land in a junk slot (bucket -1) per row.
    shift = np.maximum(_bit_length(hi - lo) - _LOG_BUCKETS, 0)
    bucket = keys - lo.astype(np.int32)[:, None]
    np.maximum(bucket, -1, out=bucket)
    bucket >>= shift.astype(np.int32)[:, None]
    slots = _BUCKETS + 1
    index = bucket + (np.arange(rows_n, dtype=np.int32) * slots + 1)[:, None]
    hist = np.bincount(index.ravel(), weights=tiled_delta, minlength=rows_n * slots)
    hist = hist.reshape(rows_n, slots)[:, 1:]
    chosen, lo, hi, left, fit_all = _narrow(hist, lo, hi, shift, left)
    threshold[open_ & fit_all] = lo[open_ & fit_all] - 1
    open_ &= ~fit_all
    # Flat nonzero is many times faster than the 2-D form.
    rows, cols = np.divmod(np.flatnonzero(bucket == chosen.astype(np.int32)[:, None]), width)
    cand_keys = keys[rows, cols].astype(np.int64)
    cand_delta = delta[cols]

    # Later rounds on the ragged candidates in each open row's boundary bucket.
    while (open_ & (lo < hi)).any():
        shift = np.maximum(_bit_length(hi - lo) - _LOG_FINE, 0)
        bucket = (cand_keys - lo[rows]) >> shift[rows]
        hist = np.bincount(rows * _FINE + bucket, weights=cand_delta, minlength=rows_n * _FINE)
        hist = hist.reshape(rows_n, _FINE)
        chosen, new_lo, new_hi, new_left, fit_all = _narrow(hist, lo, hi, shift, left)
        done = open_ & fit_all
        threshold[done] = lo[done] - 1
        open_ &= ~fit_all
        lo, hi, left = new_lo, new_hi, new_left
        keep = bucket == chosen[rows]
        rows, cols = rows[keep], cols[keep]
        cand_keys, cand_delta = cand_keys[keep], cand_delta[keep]

    # Each open row is down to one key: its candidates, in rank order, fill what is left.
    threshold[open_] = lo[open_]
    first_out[open_] = width
    if rows.size:
        cand_rank = rank[cols]
        order = np.argsort(rows * width + cand_rank)  # unique keys, so the order is determined
        rows, cand_rank, cand_delta = rows[order], cand_rank[order], cand_delta[order]
        spent = np.cumsum(cand_delta)
        before = np.concatenate(([0.0], spent))[np.searchsorted(rows, rows, side="left")]
        over = (spent - before) > left[rows]
        # Costs are non-negative, so the first step over budget ends the prefix.
        over_rows, first = np.unique(rows[over], return_index=True)
        first_out[over_rows] = cand_rank[over][first]
    return threshold, first_out


def _narrow(
    hist: np.ndarray, lo: np.ndarray, hi: np.ndarray, shift: np.ndarray, left: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Narrow each row's key range to its boundary bucket and charge the buckets above it."""
    chosen, above, fit_all = _boundary(hist, left)
    new_lo = lo + (chosen << shift)
    new_hi = np.minimum(hi, new_lo + (np.int64(1) << shift) - 1)
    new_left = left - np.where(fit_all, 0.0, above)
    chosen = np.where(fit_all, -2, chosen)  # matches no bucket, so the row keeps no candidates
    return chosen, np.where(fit_all, lo, new_lo), np.where(fit_all, hi, new_hi), new_left, fit_all


def _boundary(hist: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the first bucket from the top whose running cost exceeds `left`, the cost of the
    buckets above it, and whether everything fits (then the bucket is meaningless)."""
    rows_n, buckets = hist.shape
    every = np.arange(rows_n)
    if buckets > _FINE:
        # Two levels, so no row needs a running sum over every bucket.
        groups = hist.reshape(rows_n, buckets // _FINE, _FINE)
        group, group_above, fit_all = _boundary(groups.sum(axis=2), left)
        group = np.where(fit_all, 0, group)
        inner, inner_above, _ = _boundary(groups[every, group], left - group_above)
        return group * _FINE + inner, group_above + inner_above, fit_all
    from_top = hist[:, ::-1].cumsum(axis=1)
    over = from_top > left[:, None]
    fit_all = ~over.any(axis=1)
    rank = over.argmax(axis=1)
    above = np.where(rank > 0, from_top[every, rank - 1], 0.0)
    return buckets - 1 - rank, above, fit_all
