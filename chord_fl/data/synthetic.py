"""A small synthetic data set with learnable structure, for tests and quick demos.

Users belong to a few taste clusters. Each cluster owns a ring of items; a user mostly steps to the
next item of the ring (a Markov chain), sometimes jumps within the cluster, and rarely clicks a
random item. A sequential model can learn the transitions, so it beats popularity by a wide margin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_interactions(
    num_users: int = 200,
    num_items: int = 120,
    num_clusters: int = 4,
    min_length: int = 10,
    max_length: int = 40,
    p_next: float = 0.75,
    p_noise: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """A (user, item, timestamp) table; item and user ids start at 1 like the real files."""
    rng = np.random.default_rng(seed)
    rings = np.array_split(rng.permutation(np.arange(1, num_items + 1)), num_clusters)
    users, items, times = [], [], []
    for user in range(1, num_users + 1):
        ring = rings[rng.integers(num_clusters)]
        position = int(rng.integers(len(ring)))
        for step in range(int(rng.integers(min_length, max_length + 1))):
            draw = rng.random()
            if draw < p_noise:
                item = int(rng.integers(1, num_items + 1))
            else:
                position = (
                    (position + 1) % len(ring)
                    if draw < p_noise + p_next
                    else int(rng.integers(len(ring)))
                )
                item = int(ring[position])
            users.append(user)
            items.append(item)
            times.append(float(step))
    return pd.DataFrame({"user": users, "item": items, "timestamp": times})
