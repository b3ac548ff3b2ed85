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

With `link="exp"` the scores are log-importances instead (what sensitivity supervision fits, in log
space): exp(H_F), and lambda_l(u) = exp(L u + b). With `prior=True` each channel's importance is
also multiplied by prior_c^alpha_l, a fixed cloud-wide sensitivity (`set_prior`) with a learned
exponent per tensor: 1 at start for every tensor but the item tables (by rows), whose bilinear
heads start from the backbone's own view, u . e_c (plus the output bias, for the scoring table),
divided by `item_temperature`: 0 there. With the temperature of the sharpened sensitivity
(`chord_fl.sensitivity.target_distribution`) an item row starts at p_c^(1/T) up to a common
factor, the dominant term of its sharpened sensitivity.

Every importance is finally raised to the network's `exponent` (a buffer, 1 at construction;
training chooses it on validation users: `chord_fl.validation`), which sets how unevenly the
allocator spreads bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from chord_fl.errors import ConfigError
from chord_fl.models import SequentialRecommender
from chord_fl.quant.channels import ChannelGroup, ChannelMap, channel_rows

LINKS = ("softplus", "exp")
MAX_LOG_IMPORTANCE = 60.0  # exp link: keeps every importance finite in float32
TINY = 1e-30  # importances are floored here before a power below 1, whose slope at 0 is infinite


@dataclass(frozen=True)
class HyperNetConfig:
    rank: int = 4
    filter_level: bool = True
    element_level: bool = True
    layer_level: bool = True
    link: str = "softplus"
    prior: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"rank must be >= 1, got {self.rank}")
        if self.link not in LINKS:
            raise ConfigError(f"link must be one of {', '.join(LINKS)}, got {self.link!r}")
        if not (self.filter_level or self.element_level):
            raise ConfigError("at least one of filter_level and element_level must be on")


class TensorHead(nn.Module):
    """Filter- and element-level hypernetworks of one quantized tensor."""

    def __init__(
        self,
        rows: torch.Tensor,
        profile_dim: int,
        config: HyperNetConfig,
        item_rows: bool,
        item_bias: torch.Tensor | None = None,
        item_temperature: float = 1.0,
    ) -> None:
        """`item_bias`: the backbone's own per-item score offset (Caser's output bias), added to
        the item table's log-importance so that it starts at the backbone's full logit (both
        divided by `item_temperature`, exp link)."""
        super().__init__()
        channels, elements = rows.shape
        scale = rows.norm(dim=1).mean().clamp_min(1e-8)
        self.register_buffer("rows", rows / scale)  # scale-free, so one init serves every tensor
        self.config = config
        if config.filter_level:
            self.user_to_row = nn.Linear(profile_dim, elements, bias=False)
            if config.link == "exp":
                # Log space: the item table starts at the backbone's own score of each item for
                # this user, u . e_c (the rows above are divided by `scale`); every other tensor
                # starts with no personal term, at the prior.
                nn.init.zeros_(self.user_to_row.weight)
                if item_rows and profile_dim == elements:
                    with torch.no_grad():
                        self.user_to_row.weight.copy_(
                            scale / item_temperature * torch.eye(elements)
                        )
            elif profile_dim == elements:
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
            if config.link == "exp":  # starts at nothing, so the start is the filter level's
                nn.init.zeros_(self.user_gate.weight)
                nn.init.zeros_(self.user_gate.bias)
        self.channels = channels
        offset = item_bias if config.link == "exp" and item_rows else None
        if offset is not None:
            offset = offset.detach().float() / item_temperature
        self.register_buffer("item_bias", offset)

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
        if self.config.link == "exp" and not self.config.filter_level:
            importance = importance + 1.0  # in log space the absent level is exp(0)
        if self.config.filter_level:
            bilinear = self.user_to_row(profiles) @ self.rows.T  # (B, C_l)
            prior = self.prior(self.rows.abs()).squeeze(1)  # (C_l,)
            if self.item_bias is not None:
                prior = prior + self.item_bias
            importance = importance + _link(bilinear + prior, self.config.link)
        if self.config.element_level:
            gate = self.user_gate(profiles)  # (B, r)
            outer = (gate[:, :, None] * gate[:, None, :]).flatten(1)  # (B, r*r)
            importance = importance + outer @ self._quadratic().T  # (B, C_l), >= 0: M_c is PSD
        return importance


def _link(score: torch.Tensor, link: str) -> torch.Tensor:
    if link == "exp":
        return torch.exp(score.clamp(max=MAX_LOG_IMPORTANCE))
    return F.softplus(score)


class ChordHyperNet(nn.Module):
    def __init__(
        self,
        frozen: SequentialRecommender,
        channels: ChannelMap,
        profile_dim: int,
        config: HyperNetConfig = HyperNetConfig(),
        item_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.config = config
        params = dict(frozen.named_parameters())
        self.heads = nn.ModuleList(
            TensorHead(
                channel_rows(params[g.name], g.channel_axis).detach().float(),
                profile_dim,
                config,
                _is_item_rows(g),
                frozen.output_embeddings()[1] if _is_output_table(frozen, g) else None,
                item_temperature,
            )
            for g in channels.groups
        )
        if config.layer_level:
            self.layer = nn.Linear(profile_dim, len(channels.groups))
            nn.init.zeros_(self.layer.weight)
            if config.link == "exp":
                nn.init.zeros_(self.layer.bias)
        self.register_buffer("exponent", torch.tensor(1.0))
        if config.prior:
            self.register_buffer("log_prior", torch.zeros(channels.channels))
            exponent = [0.0 if _is_item_rows(g) else 1.0 for g in channels.groups]
            self.prior_exponent = nn.Parameter(torch.tensor(exponent))
            self._sizes = [g.channels for g in channels.groups]

    def set_prior(self, prior: np.ndarray) -> None:
        """The cloud-wide (C,) sensitivity that every importance is scaled by (`prior=True`)."""
        prior = torch.as_tensor(np.asarray(prior, dtype=np.float64))
        floor = prior[prior > 0].min() if (prior > 0).any() else torch.tensor(1.0)
        # Relative to the mean, so the scale of sensitivities never reaches float32's limits.
        self.log_prior.copy_(torch.log(prior.clamp_min(floor) / prior.mean().clamp_min(1e-300)))

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """(B, D) profiles -> (B, C) channel importance in code-vector order."""
        profiles = profiles.float()
        per_tensor = [head(profiles) for head in self.heads]
        if self.config.layer_level:
            if self.config.link == "exp":
                weights = torch.exp(self.layer(profiles).clamp(max=MAX_LOG_IMPORTANCE))
            else:
                weights = F.softplus(self.layer(profiles)) / F.softplus(torch.zeros(()))
            per_tensor = [imp * weights[:, [i]] for i, imp in enumerate(per_tensor)]
        importance = torch.cat(per_tensor, dim=1)
        if self.config.prior:
            exponent = torch.repeat_interleave(
                self.prior_exponent,
                torch.tensor(self._sizes, device=importance.device),
                output_size=importance.shape[1],
            )
            importance = importance * torch.exp(exponent * self.log_prior)
        if self.exponent != 1:
            importance = importance.clamp_min(TINY) ** self.exponent
        return importance


def _is_output_table(frozen: SequentialRecommender, group: ChannelGroup) -> bool:
    return group.name == frozen.output_table and group.channel_axis == 0


def _is_item_rows(group: ChannelGroup) -> bool:
    """An item table by rows (input or output): its heads start at the backbone's own view."""
    return group.name.endswith("embedding.weight") and group.channel_axis == 0
