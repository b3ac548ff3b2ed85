"""Flower strategies: one registry from a strategy name (`chord_fl.federation.runconfig.STRATEGIES`:
the methods of `chord_fl.methods`, plus FedAvg) to how it is built."""

from __future__ import annotations

from dataclasses import dataclass

from flwr.serverapp.strategy import Strategy

from chord_fl.errors import ConfigError
from chord_fl.methods import METHODS, Cloud
from strategies.base import FleetRun
from strategies.chord import CodeStrategy
from strategies.fedavg import LedgerFedAvg


@dataclass(frozen=True)
class StrategySpec:
    method: str | None = None  # a method of chord_fl.methods; None: FedAvg
    quantize_uniform: bool = False  # FedAvg only: devices quantize the aggregate to their budget

    @property
    def frozen_weights(self) -> bool:
        """Devices hold the frozen backbone (every strategy but FedAvg's)."""
        return self.method is not None


STRATEGIES: dict[str, StrategySpec] = {
    **{name: StrategySpec(method=name) for name in METHODS},
    "fedavg": StrategySpec(),
    "fedavg-uniform": StrategySpec(quantize_uniform=True),
}


def strategy_spec(name: str) -> StrategySpec:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def build_strategy(run: FleetRun, cloud: Cloud | None) -> Strategy:
    """The strategy the run config names; `cloud`: what `load_cloud` loaded for its method."""
    spec = strategy_spec(run.config.strategy)
    if spec.frozen_weights:
        if cloud is None:
            raise ConfigError(f"{run.config.strategy} needs the cloud models")
        return CodeStrategy(run=run, method=spec.method, cloud=cloud)
    return LedgerFedAvg(run=run, quantize_uniform=spec.quantize_uniform)
