"""Cloud hypernetworks: a device profile u -> an importance for every channel of the frozen model.

For each quantized tensor l with frozen rows W_l (C_l channels of K_l weights):
- filter level: H_F,l(u)[c] = <P_l u, W_c> + <q_l, |W_c|> + b_l. A bilinear score of u against
  the channel's own weights (for the item table, how relevant item c looks to this user) plus a
  user-independent prior; its size is independent of C_l.
- element level, low rank: A_l(u) = W_l R_l diag(g_l(u)) in R^(C_l x r), B_l in R^(r x K_l), with
  g_l(u) = G_l u; E_l(u) = A_l(u) B_l is a per-weight sensitivity. Combined with the frozen weights
  it reconstructs a filter importance, the weight-energy-weighted mean of E^2:
  sum_k E_ck^2 W_ck^2 / sum_k W_ck^2 = g^T M_c g, with M_c an r x r matrix per channel that does
  not depend on u. So E is never materialised: per device the element level costs r^2 C_l, not
  r C_l K_l (the user enters through the r gates only, which keeps the cloud fast).
- layer level: lambda(u) = softplus(L u + b) in R^L, one weight per tensor.
Importance of channel c in tensor l: lambda_l(u) * (softplus(H_F) + element importance). Any level
can be switched off (ablations); a switched-off level contributes 1 (layer) or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import ChannelMap, channel_rows


@dataclass(frozen=True)
class HyperNetConfig:
    rank: int = 4
    filter_level: bool = True
    element_level: bool = True
    layer_level: bool = True

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if not (self.filter_level or self.element_level):
            raise ConfigError("at least one of filter_level and element_level must be on")


class TensorHead(nn.Module):
    """Filter- and element-level hypernetworks of one quantized tensor."""

    def __init__(self, rows: torch.Tensor, profile_dim: int, config: HyperNetConfig) -> None:
        super().__init__()
        channels, elements = rows.shape
        scale = rows.norm(dim=1).mean().clamp_min(1e-8)
        self.register_buffer("rows", rows / scale)  # scale-free, so one init serves every tensor
        self.config = config
        if config.filter_level:
            self.user_to_row = nn.Linear(profile_dim, elements, bias=False)
            if profile_dim == elements:
                # Start from the frozen model's own view: for the item table, u . e_c is the
                # backbone's score of item c for this user.
                nn.init.eye_(self.user_to_row.weight)
            self.prior = nn.Linear(elements, 1)
            nn.init.zeros_(self.prior.weight)
        if config.element_level:
            rank = config.rank
            self.row_basis = nn.Parameter(torch.randn(elements, rank) / elements**0.5)
            self.element_basis = nn.Parameter(torch.randn(rank, elements) / elements**0.5)
            self.user_gate = nn.Linear(profile_dim, rank)
        self.channels = channels

    def _quadratic(self) -> torch.Tensor:
        """(C_l, r*r) flattened M_c (cheap: r^2 C_l K_l once per batch of devices)."""
        a = self.rows @ self.row_basis  # (C, r)
        energy = self.rows**2  # (C, K)
        gram = torch.einsum("jk,ck,lk->cjl", self.element_basis, energy, self.element_basis)
        quadratic = (
            gram * a[:, :, None] * a[:, None, :] / energy.sum(1).clamp_min(1e-12)[:, None, None]
        )
        return quadratic.flatten(1)

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C_l) non-negative channel importance before layer weighting."""
        importance = profiles.new_zeros(profiles.shape[0], self.channels)
        if self.config.filter_level:
            bilinear = self.user_to_row(profiles) @ self.rows.T  # (B, C_l)
            prior = self.prior(self.rows.abs()).squeeze(1)  # (C_l,)
            importance = importance + F.softplus(bilinear + prior)
        if self.config.element_level:
            gate = self.user_gate(profiles)  # (B, r)
            outer = (gate[:, :, None] * gate[:, None, :]).flatten(1)  # (B, r*r)
            importance = importance + outer @ self._quadratic().T  # (B, C_l), >= 0: M_c is PSD
        return importance


class ChordHyperNet(nn.Module):
    def __init__(
        self,
        frozen: SequentialRecommender,
        channels: ChannelMap,
        profile_dim: int,
        config: HyperNetConfig = HyperNetConfig(),
    ) -> None:
        super().__init__()
        self.config = config
        params = dict(frozen.named_parameters())
        self.heads = nn.ModuleList(
            TensorHead(
                channel_rows(params[g.name], g.channel_axis).detach().float(), profile_dim, config
            )
            for g in channels.groups
        )
        if config.layer_level:
            self.layer = nn.Linear(profile_dim, len(channels.groups))
            nn.init.zeros_(self.layer.weight)

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """(B, D) profiles -> (B, C) channel importance in code-vector order."""
        profiles = profiles.float()
        per_tensor = [head(profiles) for head in self.heads]
        if self.config.layer_level:
            weights = F.softplus(self.layer(profiles)) / F.softplus(torch.zeros(()))
            per_tensor = [imp * weights[:, [i]] for i, imp in enumerate(per_tensor)]
        return torch.cat(per_tensor, dim=1)
