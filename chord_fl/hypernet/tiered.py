"""What the cloud serves a fleet of tiers: an untrained start and a trained network (possibly of
another recipe, `chord_fl.hypernet.serving`), and for each tier's byte budget which of the two
its devices get.

One network's importances serve every budget through the allocator, and a change that helps
small budgets can hurt larger ones: on MovieLens-1M SASRec's trained relaxation gained 0.0126
NDCG@10 on test targets at the 2-bit tier and lost 0.0116 at the 3-bit tier (README, "The tier
guard at every tier"). Validation decides which tiers get the trained network
(`chord_fl.selection.tier_choices`), and each device's budget picks its network here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from chord_fl.errors import ConfigError
from chord_fl.hypernet.networks import ChordHyperNet


class TieredHyperNet(nn.Module):
    """Two networks, possibly of different recipes, and the tier budgets' choice between them."""

    START, TRAINED = 0, 1

    def __init__(
        self,
        start: ChordHyperNet,
        trained: ChordHyperNet,
        tier_bytes: Sequence[int],
        trained_at: Sequence[bool],
    ) -> None:
        super().__init__()
        if len(tier_bytes) != len(trained_at) or not len(tier_bytes):
            raise ConfigError(
                f"one choice per tier budget: {len(tier_bytes)} budgets, {len(trained_at)} choices"
            )
        self.start, self.trained = start, trained
        self.register_buffer("tier_bytes", torch.as_tensor(np.asarray(tier_bytes, np.int64)))
        self.register_buffer("trained_at", torch.as_tensor(np.asarray(trained_at, bool)))
        # Budgets no tier has, decided on their own (`with_decisions`); exact budgets only, and
        # not saved with the networks.
        self.decided: dict[int, bool] = {}

    @property
    def networks(self) -> tuple[ChordHyperNet, ChordHyperNet]:
        return self.start, self.trained

    @property
    def exponent(self) -> torch.Tensor:
        """The start's importance exponent (each network applies its own; a recipe's trained
        network was trained at its start's)."""
        return self.start.exponent

    def route(self, budgets: np.ndarray) -> np.ndarray:
        """(D,) START or TRAINED for devices with (D,) byte budgets. A tier's budget gets the
        network validation chose for that tier; a budget between two tiers gets the trained one
        only where both chose it, and one beyond the tiers that of the nearest tier."""
        below, above = self._neighbours(budgets)
        chosen = below & above
        for budget, trained in self.decided.items():
            chosen = np.where(np.asarray(budgets) == budget, trained, chosen)
        return np.where(chosen, self.TRAINED, self.START)

    def with_decisions(self, decided: dict[int, bool]) -> TieredHyperNet:
        """The same networks and tiers, with `decided` (byte budget: trained?) settling those
        exact budgets (`chord_fl.hypernet.serving.decide_budgets`); a budget near one of them
        still routes by the tiers."""
        out = TieredHyperNet(
            self.start, self.trained, self.tier_bytes.tolist(), self.trained_at.tolist()
        )
        out.decided = {**self.decided, **{int(b): bool(t) for b, t in decided.items()}}
        return out

    def disputed(self, budgets: np.ndarray) -> np.ndarray:
        """(D,) whether each budget lies between two tiers that chose differently: `route` gives
        it the start for want of evidence of its own (`chord_fl.hypernet.serving.decide_budgets`
        gathers it); False where a decision of its own settled it."""
        below, above = self._neighbours(budgets)
        return (below != above) & ~np.isin(np.asarray(budgets), list(self.decided))

    def _neighbours(self, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The choices of the nearest tier at or below each budget and at or above it (the
        nearest tier's for both beyond the tiers)."""
        tier_bytes = self.tier_bytes.numpy()
        order = np.argsort(tier_bytes, kind="stable")
        sorted_bytes, chosen = tier_bytes[order], self.trained_at.numpy()[order]
        budgets = np.asarray(budgets, dtype=np.int64)
        above = np.clip(np.searchsorted(sorted_bytes, budgets, side="left"), 0, len(order) - 1)
        below = np.clip(np.searchsorted(sorted_bytes, budgets, side="right") - 1, 0, len(order) - 1)
        return chosen[below], chosen[above]

    def trained_tiers(self, names: Sequence[str]) -> tuple[str, ...]:
        """The names (in the fleet's tier order) of the tiers served the trained network."""
        return tuple(
            name for name, trained in zip(names, self.trained_at.tolist(), strict=True) if trained
        )
