"""Flower strategies. The registry of strategy names is `strategies.registry`; this package init
imports nothing, so a device process that needs only `strategies.protocol` loads no server code."""
