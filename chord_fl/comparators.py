"""Every method's codes for a batch of devices at their budgets, so all are compared at equal bytes.

- fp32: the frozen full-precision model, no budget (codes None).
- uniform: the highest single precision whose whole model fits the budget.
- random: random importances, allocated under the budget.
- global: one non-personalised importance for all users (cloud-wide squared gradients, in the spirit
  of HAWQ), allocated under each budget.
- chord and its ablations: the hypernetworks' importances for each device's profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from chord_fl.cloud import issue_codes
from chord_fl.errors import ConfigError
from chord_fl.hypernet.networks import ChordHyperNet, HyperNetConfig
from chord_fl.quant.allocation import uniform_codes
from chord_fl.quant.quantizer import PreparedModel

CHORD_VARIANTS = {
    "chord": HyperNetConfig(),
    "chord-no-element": HyperNetConfig(element_level=False),
    "chord-no-filter": HyperNetConfig(filter_level=False),
    "chord-no-layer": HyperNetConfig(layer_level=False),
}
METHODS = ("fp32", "uniform", "random", "global", *CHORD_VARIANTS)


HYPERNET_CHUNK = 256


@torch.no_grad()
def hypernet_importance(
    net: ChordHyperNet, profiles: np.ndarray, chunk: int = HYPERNET_CHUNK
) -> np.ndarray:
    """(D, C) importance, computed in zero-padded chunks of one fixed shape.

    Matrix kernels choose their summation order by shape, so a batch of another size can change
    a row in its last bits and flip a code at a tie; with one shape, a device's codes never
    depend on which other devices share its round (a rejected device changes no one else's)."""
    profiles = torch.from_numpy(np.asarray(profiles))
    out = []
    for start in range(0, len(profiles), chunk):
        rows = profiles[start : start + chunk]
        padding = rows.new_zeros((chunk - len(rows), rows.shape[1]))
        out.append(net(torch.cat([rows, padding]))[: len(rows)])
    if not out:
        return np.empty((0, sum(head.channels for head in net.heads)))
    return torch.cat(out).numpy()


@dataclass
class CloudModels:
    """What the cloud holds: the prepared frozen model, trained hypernetworks by method name, and
    the cloud-wide channel importance for the global strategy."""

    prepared: PreparedModel
    hypernets: dict[str, ChordHyperNet] = field(default_factory=dict)
    global_importance: np.ndarray | None = None


def method_codes(
    method: str,
    cloud: CloudModels,
    profiles: np.ndarray,
    budgets: np.ndarray,
    seed: int = 0,
    device_ids: np.ndarray | None = None,
) -> np.ndarray | None:
    """(D, C) codes of `method` for devices with (D, hidden) profiles and (D,) byte budgets;
    `device_ids` (default 0..D-1) key each device's random codes."""
    prepared = cloud.prepared
    devices, channels = len(budgets), prepared.channels.channels
    if method == "fp32":
        return None
    if method == "uniform":
        cost = prepared.channels.cost(prepared.table)
        return uniform_codes(cost, np.asarray(budgets) - prepared.channels.fixed_bytes)
    if method == "random":
        # One stream per device: its codes never depend on which other devices share the batch.
        ids = np.arange(devices) if device_ids is None else np.asarray(device_ids)
        importance = np.array(
            [np.random.default_rng([seed, int(i), 0x72616E64]).random(channels) for i in ids]
        ).reshape(devices, channels)
    elif method == "global":
        if cloud.global_importance is None:
            raise ConfigError("the global strategy needs cloud-wide channel importance")
        importance = np.broadcast_to(cloud.global_importance, (devices, channels))
    elif method in CHORD_VARIANTS:
        if method not in cloud.hypernets:
            raise ConfigError(f"no trained hypernetworks for {method!r}")
        importance = hypernet_importance(cloud.hypernets[method], profiles)
    else:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return issue_codes(prepared, importance, budgets)
