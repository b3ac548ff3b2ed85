"""The wire: content builders and read_* checks, which return (value, None) or (None, reason)."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from chord_fl.federation.runlog import CODE_COLUMNS
from chord_fl.hypernet.profile import PROFILE_DTYPE
from strategies import protocol
from strategies.protocol import (
    ARRAYS,
    BUDGET,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    PARTITION,
    PROFILE,
    REPORT_KEYS,
    TRAIN_MS,
    UPLOAD,
    message_bytes,
    partition_content,
    read_partition,
    read_report,
    read_upload,
    read_weights,
    timed,
    weight_signature,
    weights_nbytes,
)

MIN_BUDGET, MAX_BUDGET = 1_000, 50_000


# What a device sends: each reply carries its timing record.
def upload_content(budget, profile):
    return timed(protocol.upload_content(budget, profile), 0.25)


def report_content(report):
    return timed(protocol.report_content(report), 0.25)


def fit_content(weights, examples, train_ms):
    return timed(protocol.fit_content(weights, examples, train_ms), 0.25)


def _rejected(result):
    value, reason = result
    assert value is None
    assert isinstance(reason, str) and reason
    return reason


# -- upload ------------------------------------------------------------------------------------


def test_upload_round_trip_with_a_profile():
    profile = np.array([0.5, -1.25, 3.0, 0.0, 1e-3, -7.5, 2.0, 65504.0], dtype=np.float16)
    content = upload_content(12_345, profile)
    assert len(content.config_records[UPLOAD][PROFILE]) == 8 * np.dtype(PROFILE_DTYPE).itemsize
    value, reason = read_upload(content, 8, MAX_BUDGET, MIN_BUDGET)
    assert reason is None
    read_profile, budget = value
    assert budget == 12_345 and type(budget) is int
    assert read_profile.dtype == PROFILE_DTYPE
    np.testing.assert_array_equal(read_profile, profile)


def test_upload_converts_a_float32_profile_to_the_wire_dtype():
    profile = np.linspace(-1, 1, 8, dtype=np.float32)
    (read_profile, _), reason = read_upload(upload_content(2_000, profile), 8, MAX_BUDGET, 1)
    assert reason is None
    np.testing.assert_array_equal(read_profile, profile.astype(PROFILE_DTYPE))


def test_upload_round_trip_budget_only():
    content = upload_content(MIN_BUDGET, None)
    assert PROFILE not in content.config_records[UPLOAD]
    value, reason = read_upload(content, None, MAX_BUDGET, MIN_BUDGET)
    assert reason is None
    assert value == (None, MIN_BUDGET)
    # both ends of the range are accepted
    assert read_upload(upload_content(MAX_BUDGET, None), None, MAX_BUDGET, MIN_BUDGET)[0] == (
        None,
        MAX_BUDGET,
    )


def test_upload_without_a_record_is_rejected():
    reason = _rejected(read_upload(RecordDict(), None, MAX_BUDGET, MIN_BUDGET))
    assert UPLOAD in reason
    other = RecordDict({CONFIG: ConfigRecord({BUDGET: 2_000, protocol.DEVICE_S: 0.25})})
    assert "expected" in _rejected(read_upload(other, None, MAX_BUDGET, MIN_BUDGET))


@pytest.mark.parametrize("budget", [2_000.0, "2000", True, b"\x00"])
def test_upload_with_a_non_integer_budget_is_rejected(budget):
    content = timed(RecordDict({UPLOAD: ConfigRecord({BUDGET: budget})}), 0.25)
    reason = _rejected(read_upload(content, None, MAX_BUDGET, MIN_BUDGET))
    assert "integer" in reason


def test_upload_without_a_budget_is_rejected():
    content = timed(RecordDict({UPLOAD: ConfigRecord({PROFILE: b"\x00" * 16})}), 0.25)
    reason = _rejected(read_upload(content, 8, MAX_BUDGET, MIN_BUDGET))
    assert reason == "budget must be an integer, got NoneType"


@pytest.mark.parametrize("budget", [MIN_BUDGET - 1, MAX_BUDGET + 1, 0, -5])
def test_upload_with_a_budget_outside_the_range_is_rejected(budget):
    profile = np.zeros(8, dtype=PROFILE_DTYPE)
    reason = _rejected(read_upload(upload_content(budget, profile), 8, MAX_BUDGET, MIN_BUDGET))
    assert reason == f"budget {budget} B outside the tier's range {MIN_BUDGET}..{MAX_BUDGET} B"


@pytest.mark.parametrize("length", [0, 7, 9, 16])
def test_upload_with_a_profile_of_the_wrong_length_is_rejected(length):
    content = upload_content(2_000, np.ones(length, dtype=PROFILE_DTYPE))
    reason = _rejected(read_upload(content, 8, MAX_BUDGET, MIN_BUDGET))
    assert reason == f"profile must be 16 bytes, got {2 * length}"


def test_upload_missing_an_expected_profile_is_rejected():
    reason = _rejected(read_upload(upload_content(2_000, None), 8, MAX_BUDGET, MIN_BUDGET))
    assert reason == "profile must be 16 bytes, got NoneType"


def test_upload_with_an_odd_byte_count_is_rejected_not_raised():
    record = ConfigRecord({BUDGET: 2_000, PROFILE: b"\x00" * 15})
    content = timed(RecordDict({UPLOAD: record}), 0.25)
    reason = _rejected(read_upload(content, 8, MAX_BUDGET, MIN_BUDGET))
    assert reason == "profile must be 16 bytes, got 15"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_upload_with_a_non_finite_profile_is_rejected(bad):
    profile = np.zeros(8, dtype=PROFILE_DTYPE)
    profile[3] = bad
    reason = _rejected(read_upload(upload_content(2_000, profile), 8, MAX_BUDGET, MIN_BUDGET))
    assert "finite" in reason


def test_upload_payload_bytes_counts_budget_and_profile():
    assert protocol.upload_payload_bytes(None) == protocol.BUDGET_BYTES
    assert protocol.upload_payload_bytes(8) == protocol.BUDGET_BYTES + 8 * 2


# -- report ------------------------------------------------------------------------------------


def _report() -> dict[str, float]:
    report = {key: 0.125 * (index + 1) for index, key in enumerate(REPORT_KEYS)}
    report.update({key: float(10 + index) for index, key in enumerate(CODE_COLUMNS)})
    return report


def test_report_round_trip():
    report = _report()
    value, reason = read_report(report_content(report))
    assert reason is None
    assert value == report
    assert all(type(item) is float for item in value.values())


def test_report_without_code_columns_is_accepted():
    report = {key: 1.0 for key in REPORT_KEYS}
    assert read_report(report_content(report)) == (report, None)


def test_report_without_a_record_is_rejected():
    reason = _rejected(read_report(RecordDict()))
    assert METRICS in reason


@pytest.mark.parametrize("key", ["ndcg@10", "model_bytes", "adapt_ms", REPORT_KEYS[0]])
def test_report_missing_a_key_is_rejected(key):
    report = _report()
    del report[key]
    reason = _rejected(read_report(report_content(report)))
    assert key in reason


@pytest.mark.parametrize("key", ["hr@10", "avg_bits", CODE_COLUMNS[0]])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_report_with_a_non_finite_value_is_rejected(key, bad):
    report = _report()
    report[key] = bad
    reason = _rejected(read_report(report_content(report)))
    assert "finite" in reason


# -- weights -----------------------------------------------------------------------------------


def _state() -> dict[str, torch.Tensor]:
    return {
        "embed.weight": torch.arange(12, dtype=torch.float32).reshape(4, 3),
        "head.bias": torch.full((5,), 0.5),
        "steps": torch.tensor([3], dtype=torch.int64),
    }


@pytest.fixture
def signature():
    return weight_signature(ArrayRecord(_state()))


def test_weight_signature_names_shapes_and_dtypes(signature):
    assert signature == {
        "embed.weight": ((4, 3), "float32"),
        "head.bias": ((5,), "float32"),
        "steps": ((1,), "int64"),
    }


def test_fit_reply_with_matching_weights_is_accepted(signature):
    content = fit_content(_state(), 17, 12.5)
    assert read_weights(content, signature) == (12.5, None)
    arrays = content.array_records[ARRAYS]
    torch.testing.assert_close(arrays["embed.weight"].numpy(), _state()["embed.weight"].numpy())


def test_fit_reply_with_a_wrong_shape_is_rejected(signature):
    state = _state()
    state["embed.weight"] = torch.zeros(3, 4)
    reason = _rejected(read_weights(fit_content(state, 17, 1.0), signature))
    assert "embed.weight" in reason


def test_fit_reply_with_a_wrong_dtype_is_rejected(signature):
    state = _state()
    state["head.bias"] = state["head.bias"].double()
    reason = _rejected(read_weights(fit_content(state, 17, 1.0), signature))
    assert "head.bias" in reason


def test_fit_reply_missing_or_adding_a_tensor_is_rejected(signature):
    state = _state()
    del state["steps"]
    _rejected(read_weights(fit_content(state, 17, 1.0), signature))
    state = _state()
    state["extra"] = torch.zeros(1)
    _rejected(read_weights(fit_content(state, 17, 1.0), signature))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_fit_reply_with_non_finite_weights_is_rejected(signature, bad):
    state = _state()
    state["head.bias"][2] = bad
    reason = _rejected(read_weights(fit_content(state, 17, 1.0), signature))
    assert "head.bias" in reason and "finite" in reason


@pytest.mark.parametrize("examples", [0, -3])
def test_fit_reply_with_fewer_than_one_example_is_rejected(signature, examples):
    reason = _rejected(read_weights(fit_content(_state(), examples, 1.0), signature))
    assert NUM_EXAMPLES in reason


def test_fit_reply_with_a_float_example_count_is_rejected(signature):
    content = fit_content(_state(), 17, 1.0)
    content.metric_records[METRICS][NUM_EXAMPLES] = 17.0
    _rejected(read_weights(content, signature))


def test_fit_reply_without_arrays_or_metrics_is_rejected(signature):
    content = fit_content(_state(), 17, 1.0)
    _rejected(read_weights(RecordDict({ARRAYS: content.array_records[ARRAYS]}), signature))
    _rejected(read_weights(RecordDict({METRICS: content.metric_records[METRICS]}), signature))
    no_count = RecordDict(
        {ARRAYS: content.array_records[ARRAYS], METRICS: MetricRecord({"train_ms": 1.0})}
    )
    _rejected(read_weights(no_count, signature))


def test_fit_reply_with_extra_records_is_rejected(signature):
    content = fit_content(_state(), 17, 1.0)
    content["more"] = ArrayRecord({"x": torch.zeros(1)})
    _rejected(read_weights(content, signature))


def test_weights_nbytes_is_the_sum_of_element_bytes():
    state = _state()
    expected = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    assert expected == 12 * 4 + 5 * 4 + 1 * 8
    assert weights_nbytes(ArrayRecord(state)) == expected
    half = {"w": torch.zeros(7, 3, dtype=torch.float16)}
    assert weights_nbytes(ArrayRecord(half)) == 7 * 3 * 2


# -- message size ------------------------------------------------------------------------------


@pytest.fixture
def task_identity():
    # Flower stamps every Message with the identity of the task that builds it.
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 1
    TaskIdentity.task_id = 1


def _message(payload: bytes) -> Message:
    content = RecordDict({"codes": ConfigRecord({"payload": payload})})
    return Message(content=content, dst_node_id=2, message_type="query")


def test_message_bytes_grows_with_the_payload_and_exceeds_it(task_identity):
    sizes = [message_bytes(_message(b"\x01" * length)) for length in (0, 100, 10_000)]
    assert sizes[0] < sizes[1] < sizes[2]
    assert sizes[1] > 100 and sizes[2] > 10_000
    assert sizes[2] - sizes[1] >= 9_900


def test_message_bytes_is_the_sum_over_flowers_own_object_walk(task_identity):
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    same = torch.ones(300, 7)  # two arrays with one object id: Flower sends that object once
    contents = [
        protocol.codes_content(2, bytes(range(200))),
        protocol.report_content(dict.fromkeys(("hr@10", "ndcg@10", "model_bytes"), 0.25)),
        protocol.fit_content({"a": same, "b": same.clone(), "c": torch.zeros(5)}, 8, 1.5),
    ]
    for content in contents:
        message = Message(content=content, dst_node_id=2, message_type="evaluate")
        objects = get_all_nested_objects(message).values()
        assert message_bytes(message) == sum(len(item.deflate()) for item in objects)
    arrays = contents[2][protocol.ARRAYS]
    assert arrays["a"].object_id == arrays["b"].object_id  # the case above did share an object


def test_codes_travel_in_the_instruction_record(task_identity):
    """One record instead of an instruction record plus a codes record: the second record's
    header and object id alone cost more than 100 B on every codes message."""
    payload = bytes(range(256)) + bytes(134)  # 390 B, a typical CHORD payload
    lean = Message(
        content=protocol.codes_content(3, payload), dst_node_id=2, message_type="evaluate"
    )
    two_records = RecordDict(
        {
            CONFIG: protocol.instruction(3, protocol.Task.CODES),
            "codes": ConfigRecord({"payload": payload}),
        }
    )
    wide = Message(content=two_records, dst_node_id=2, message_type="evaluate")
    assert message_bytes(wide) - message_bytes(lean) > 100
    assert protocol.read_codes(lean.content) == payload


def test_device_time_travels_in_the_reply_record(task_identity):
    report = dict.fromkeys(protocol.REPORT_KEYS, 0.5)
    lean = Message(
        content=timed(protocol.report_content(report), 0.25), dst_node_id=2, message_type="evaluate"
    )
    separate = protocol.report_content(report)
    separate["timing"] = ConfigRecord({protocol.DEVICE_S: 0.25})
    wide = Message(content=separate, dst_node_id=2, message_type="evaluate")
    assert message_bytes(wide) - message_bytes(lean) > 100
    assert protocol.read_device_seconds(lean.content) == (0.25, None)
    assert protocol.read_report(lean.content)[0] == report


def test_message_bytes_counts_array_payloads(task_identity):
    small = Message(
        content=RecordDict({ARRAYS: ArrayRecord({"w": torch.zeros(10)})}),
        dst_node_id=2,
        message_type="train",
    )
    large = Message(
        content=RecordDict({ARRAYS: ArrayRecord({"w": torch.zeros(10_000)})}),
        dst_node_id=2,
        message_type="train",
    )
    assert message_bytes(large) - message_bytes(small) >= (10_000 - 10) * 4
    assert message_bytes(large) > weights_nbytes(large.content.array_records[ARRAYS])


# -- partition ---------------------------------------------------------------------------------


@pytest.mark.parametrize("partition", [0, 1, 41])
def test_read_partition_accepts_a_non_negative_int(partition):
    assert read_partition(partition_content(partition)) == (partition, None)


def test_read_partition_rejects_missing_negative_or_non_int():
    assert PARTITION in _rejected(read_partition(RecordDict()))
    _rejected(read_partition(RecordDict({CONFIG: ConfigRecord({"other": 1})})))
    _rejected(read_partition(partition_content(-1)))
    _rejected(read_partition(RecordDict({CONFIG: ConfigRecord({PARTITION: True})})))
    _rejected(read_partition(RecordDict({CONFIG: ConfigRecord({PARTITION: 1.0})})))
    _rejected(read_partition(RecordDict({CONFIG: ConfigRecord({PARTITION: "3"})})))


def _spoofed(data: bytes, stype: str = "numpy.ndarray") -> Array:
    """What a hostile device can send: metadata that says float32[4, 3], any bytes."""
    return Array(dtype="float32", shape=(4, 3), stype=stype, data=data)


@pytest.mark.parametrize(
    ("array", "why"),
    [
        (_spoofed(Array(np.zeros(6, np.float64)).data), "not the declared"),  # same size, float64
        (_spoofed(Array(np.zeros((12, 1), np.float32)).data), "not the declared"),  # other shape
        (_spoofed(bytes(176)), "not a valid .npy"),  # the right length of garbage
        (_spoofed(Array(np.zeros((4, 3), np.float32)).data, "torch.Tensor"), "not numpy"),
    ],
)
def test_weights_whose_bytes_contradict_their_metadata_are_refused(signature, array, why):
    content = fit_content(_state(), 17, 1.0)
    content.array_records[ARRAYS]["embed.weight"] = array
    assert why in _rejected(read_weights(content, signature))


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        ({NUM_EXAMPLES: 3}, "must be"),  # no training time
        ({NUM_EXAMPLES: 3, TRAIN_MS: 1.0, "extra": 1.0}, "must be"),
        ({NUM_EXAMPLES: 3, TRAIN_MS: float("nan")}, "finite"),
        ({NUM_EXAMPLES: 3, TRAIN_MS: [1.0, 2.0]}, "finite"),
    ],
)
def test_fit_metrics_other_than_examples_and_time_are_refused(signature, metrics, why):
    content = fit_content(_state(), 17, 1.0)
    content[METRICS] = MetricRecord(metrics)
    assert why in _rejected(read_weights(content, signature))


@pytest.mark.parametrize(
    ("key", "value"),
    [("hr@10", 1.5), ("model_bytes", -1.0), ("avg_bits", 40.0), ("codes_1", 2.5)],
)
def test_reports_out_of_range_are_refused(key, value):
    report = {**dict.fromkeys(REPORT_KEYS, 0.5), "codes_1": 3.0, key: value}
    _rejected(read_report(report_content(report)))


def test_message_bytes_with_the_content_measured_once_equals_the_full_count(task_identity):
    content = fit_content(_state(), 17, 1.0)
    shared = protocol.content_bytes(content)
    for node in (1, 2**40):
        message = Message(content=content, dst_node_id=node, message_type="train")
        assert message_bytes(message, shared) == message_bytes(message)
