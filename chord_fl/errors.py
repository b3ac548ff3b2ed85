"""Errors that name what is wrong and where; raised for bad configuration and bad input only."""


class ChordError(Exception):
    """Base class of every error chord-fl raises on purpose."""


class ConfigError(ChordError, ValueError):
    """A setting is unknown, out of range or impossible (for example a budget below the floor)."""


class DataError(ChordError, ValueError):
    """A data file is missing, malformed or cannot be fetched."""


def require_positive(config: object, *names: str) -> None:
    """ConfigError unless each named attribute of `config` is >= 1 (counts, sizes, epochs)."""
    for name in names:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")


class BudgetExceeded(ChordError):
    """A model was issued over its device's byte budget: a bug, so the run stops."""
