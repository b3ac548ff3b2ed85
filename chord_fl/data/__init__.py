"""Data: find a data set, read it, order and remap it, split it in time, sample negatives."""

from chord_fl.data.negatives import sample_negatives
from chord_fl.data.readers import read_interactions
from chord_fl.data.sequences import (
    PADDING,
    SequenceData,
    build_sequences,
    filter_counts,
)
from chord_fl.data.sources import dataset_defaults, locate, resolve_data_dir
from chord_fl.data.split import (
    VALIDATION,
    RoundSplit,
    UserSequence,
    make_split,
    pad_left,
)
from chord_fl.data.synthetic import synthetic_interactions


def load_dataset(
    dataset: str,
    data_dir: str | None = None,
    format: str | None = None,
    user_min: int | None = None,
    item_min: int | None = None,
) -> SequenceData:
    """Locate (downloading MovieLens if missing), read and sequence a data set.

    `user_min`/`item_min` default to the data set's own filters (5 items for MovieLens-1M).
    """
    path, format = locate(dataset, data_dir, format)
    default_user_min, default_item_min = dataset_defaults(dataset)
    return build_sequences(
        read_interactions(path, format),
        name=dataset,
        user_min=default_user_min if user_min is None else user_min,
        item_min=default_item_min if item_min is None else item_min,
    )


def synthetic_dataset(seed: int = 0, **kwargs) -> SequenceData:
    """The synthetic generator's table, sequenced like any real file."""
    return build_sequences(synthetic_interactions(seed=seed, **kwargs), name="synthetic")


__all__ = [
    "PADDING",
    "VALIDATION",
    "RoundSplit",
    "SequenceData",
    "UserSequence",
    "build_sequences",
    "filter_counts",
    "load_dataset",
    "make_split",
    "pad_left",
    "read_interactions",
    "resolve_data_dir",
    "sample_negatives",
    "synthetic_dataset",
    "synthetic_interactions",
]
