"""The device-side profile: the frozen full-precision backbone's view of the recent window.

It is all a device uploads in CHORD: a vector of `hidden` fp16 numbers (128 bytes for SASRec at
hidden 64). Raw item ids never leave the device.
"""

from __future__ import annotations

import numpy as np
import torch

from chord_fl.models import SequentialRecommender

PROFILE_DTYPE = np.float16


@torch.no_grad()
def encode_profiles(
    model: SequentialRecommender,
    windows: list[np.ndarray],
    window_length: int | None = None,
    batch_size: int = 512,
) -> np.ndarray:
    """(U, hidden) fp16 profiles of the last `window_length` items (default: max_len)."""
    length = min(window_length or model.max_len, model.max_len)
    was_training = model.training
    if was_training:  # switching walks every submodule: a fifth of a device's profile time
        model.eval()
    recent = [window[-length:] for window in windows]
    out = [
        model.encode(model.pad_windows(recent[i : i + batch_size])).cpu().numpy()
        for i in range(0, len(recent), batch_size)
    ]
    if was_training:
        model.train()
    return np.concatenate(out).astype(PROFILE_DTYPE)
