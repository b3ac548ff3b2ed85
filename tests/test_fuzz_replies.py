"""Property-based fuzzing of the reply validator: whatever a device sends, every check returns a
value or a reason and never raises."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chord_fl.federation.runlog import CODE_COLUMNS
from strategies import protocol

RECORD_NAMES = st.sampled_from(
    [protocol.UPLOAD, protocol.METRICS, protocol.ARRAYS, protocol.CONFIG, "x"]
)
KEYS = st.sampled_from(
    [
        protocol.BUDGET,
        protocol.PROFILE,
        protocol.DEVICE_S,
        protocol.NUM_EXAMPLES,
        protocol.PARTITION,
        *protocol.REPORT_KEYS,
        *CODE_COLUMNS,
        "w",
        "b",
        "junk",
    ]
)
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.binary(max_size=160),
)
METRIC_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.floats(allow_nan=True), max_size=3),
)
HONEST_ARRAYS = st.builds(
    lambda shape, dtype, fill: Array(np.full(shape, fill).astype(dtype)),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.sampled_from(["float32", "float16", "int64", "uint8"]),
    st.floats(allow_nan=True, allow_infinity=True, width=16),
)
# Metadata that claims the model's shapes over bytes that may say anything else.
SPOOFED_ARRAYS = st.builds(
    lambda shape, stype, data: Array(dtype="float32", shape=shape, stype=stype, data=data),
    st.sampled_from([(2, 3), (3,)]),
    st.sampled_from(["numpy.ndarray", "torch.Tensor"]),
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda n: Array(np.zeros(n, np.float64)).data, st.integers(0, 6)),
        st.builds(lambda n: Array(np.zeros((n, 1), np.float32)).data, st.integers(0, 6)),
    ),
)
ARRAYS = st.one_of(HONEST_ARRAYS, SPOOFED_ARRAYS)


def _valid_records() -> dict[str, dict]:
    """One well-formed reply of each kind (a device's upload, report, FedAvg weights)."""
    report = MetricRecord({**dict.fromkeys(protocol.REPORT_KEYS, 0.5), protocol.DEVICE_S: 0.1})
    fit = MetricRecord({protocol.NUM_EXAMPLES: 3, protocol.TRAIN_MS: 1.0, protocol.DEVICE_S: 0.1})
    weights = ArrayRecord({"w": torch.zeros(2, 3), "b": torch.zeros(3)})
    upload = ConfigRecord({protocol.BUDGET: 50, protocol.PROFILE: bytes(8), protocol.DEVICE_S: 0.1})
    return {
        "upload": {protocol.UPLOAD: upload},
        "report": {protocol.METRICS: report},
        "fit": {protocol.ARRAYS: weights, protocol.METRICS: fit},
    }


@st.composite
def near_valid(draw) -> RecordDict:
    """A well-formed reply with one value swapped for anything at all, sometimes a record
    dropped: reaches the checks that only complete replies get to."""
    kind = draw(st.sampled_from(["upload", "report", "fit"]))
    content = RecordDict(_valid_records()[kind])
    record = content[draw(st.sampled_from(sorted(content)))]
    key = draw(st.sampled_from(sorted(record)))
    if isinstance(record, ArrayRecord):
        record[key] = draw(ARRAYS)
    elif isinstance(record, MetricRecord):
        record[key] = draw(METRIC_VALUES)
    else:
        record[key] = draw(SCALARS)
    if draw(st.integers(0, 9)) == 0:
        del content[draw(st.sampled_from(sorted(content)))]
    return content


@st.composite
def replies(draw) -> RecordDict:
    if draw(st.booleans()):
        return draw(near_valid())
    content = RecordDict()
    for name in draw(st.lists(RECORD_NAMES, max_size=4, unique=True)):
        kind = draw(st.sampled_from(["config", "metric", "array"]))
        if kind == "config":
            content[name] = ConfigRecord(draw(st.dictionaries(KEYS, SCALARS, max_size=6)))
        elif kind == "metric":
            content[name] = MetricRecord(draw(st.dictionaries(KEYS, METRIC_VALUES, max_size=6)))
        else:
            content[name] = ArrayRecord(
                draw(st.dictionaries(st.sampled_from(["w", "b"]), ARRAYS, max_size=2))
            )
    return content


REFERENCE = protocol.weight_signature(ArrayRecord({"w": torch.zeros(2, 3), "b": torch.zeros(3)}))


def _is_verdict(result) -> bool:
    value, reason = result
    return (value is None) != (reason is None) and (reason is None or isinstance(reason, str))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies(), st.sampled_from([None, 4]))
def test_every_check_answers_with_a_value_or_a_reason(content, hidden):
    assert _is_verdict(protocol.read_upload(content, hidden, 1000, 10))
    assert _is_verdict(protocol.read_report(content))
    assert _is_verdict(protocol.read_weights(content, REFERENCE))
    assert _is_verdict(protocol.read_device_seconds(content))
    assert _is_verdict(protocol.read_partition(content))


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 2**40))
def test_upload_checks_never_accept_a_profile_of_the_wrong_size_or_a_budget_out_of_range(
    raw, budget
):
    content = RecordDict(
        {
            protocol.UPLOAD: ConfigRecord(
                {protocol.BUDGET: budget, protocol.PROFILE: raw, protocol.DEVICE_S: 0.1}
            ),
        }
    )
    value, reason = protocol.read_upload(content, 8, 5000, 100)
    if value is not None:
        profile, accepted = value
        assert len(raw) == 16 and 100 <= accepted <= 5000 and np.isfinite(profile).all()
    else:
        assert (
            len(raw) != 16
            or not 100 <= budget <= 5000
            or not np.isfinite(np.frombuffer(raw, np.float16)).all()
        )
