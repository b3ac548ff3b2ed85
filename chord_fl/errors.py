"""Errors that name what is wrong and where; raised for bad configuration and bad input only."""


class ChordError(Exception):
    """Base class of every error chord-fl raises on purpose."""


class ConfigError(ChordError, ValueError):
    """A setting is unknown, out of range or impossible (for example a budget below the floor)."""


class DataError(ChordError, ValueError):
    """A data file is missing, malformed or cannot be fetched."""
