"""The wire: every record key, how each payload is packed into Flower records, how each reply is
checked, and how many bytes a message takes. Server and client import their keys from here only.

Small payloads (profile, budget, codes) travel as ConfigRecord bytes, the cheapest record for a
few hundred bytes; weights travel as Flower's ArrayRecord.
"""

from __future__ import annotations

import io
import math
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from chord_fl.federation.runlog import CODE_COLUMNS, METRIC_COLUMNS
from chord_fl.hypernet.profile import PROFILE_DTYPE

CONFIG = "config"  # the cloud's instruction (Flower's FedAvg uses the same key)
ARRAYS = "arrays"  # model weights (Flower's FedAvg default)
UPLOAD = "upload"  # a device's profile and budget
METRICS = "metrics"  # a device's report
ROUND = "server-round"  # the run's round (Flower's own counter restarts when resuming)
TASK = "task"
NEXT_UPLOAD = "next-upload"  # with a round's work: send the next round's upload with the report
PROFILE = "profile"
BUDGET = "budget"
PAYLOAD = "payload"
PARTITION = "partition-id"  # as in Flower's node_config
NUM_EXAMPLES = "num-examples"  # FedAvg's weighting key
TRAIN_MS = "train_ms"
DEVICE_S = "device-s"
BUDGET_BYTES = 8  # a budget on the wire: one int64
UNIFORM_BITS = "bits"
PER_TENSOR = "per-tensor"
UNIFORM_PAYLOAD_BYTES = 2  # what a uniform width needs: its bits and its scale mode, a byte each
MAX_NPY_HEADER = 4096  # an Array's bytes are an .npy header (128 B in practice) plus the data

REPORT_KEYS = (*METRIC_COLUMNS, "model_bytes", "avg_bits", "adapt_ms")


class Task(StrEnum):
    """What the cloud asks a device to do in a message."""

    PROFILE = "profile"  # upload profile and budget
    BUDGET = "budget"  # upload the budget alone (non-personalised code strategies)
    FIT = "fit"  # FedAvg local training
    CODES = "codes"  # apply the attached codes, score the round target
    UNIFORM = "uniform"  # quantize uniformly at the attached width, score the round target
    FP32 = "fp32"  # score the round target with the frozen full-precision weights
    WEIGHTS = "weights"  # score with the attached weights
    WEIGHTS_UNIFORM = "weights-uniform"  # quantize the attached weights uniformly, then score


# -- cloud to device ---------------------------------------------------------------------------


def instruction(round_: int, task: Task) -> ConfigRecord:
    return ConfigRecord({ROUND: round_, TASK: str(task)})


def codes_content(round_: int, payload: bytes) -> RecordDict:
    # The codes ride in the instruction's own record: a second record would cost its header and
    # a 64-character object id in the message (about 160 B, measured in tests/test_protocol.py).
    record = instruction(round_, Task.CODES)
    record[PAYLOAD] = payload
    return RecordDict({CONFIG: record})


def uniform_content(round_: int, bits: int, per_tensor: bool) -> RecordDict:
    record = instruction(round_, Task.UNIFORM)
    record[UNIFORM_BITS], record[PER_TENSOR] = int(bits), bool(per_tensor)
    return RecordDict({CONFIG: record})


def read_uniform(content: RecordDict) -> tuple[int, bool]:
    """(bits, per_tensor) of a uniform instruction; ValueError for anything else."""
    config = content.config_records[CONFIG]
    bits, per_tensor = config.get(UNIFORM_BITS), config.get(PER_TENSOR)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"uniform bits must be an integer in 1..8, got {bits!r}")
    if not isinstance(per_tensor, bool):
        raise ValueError(f"uniform {PER_TENSOR!r} must be a bool, got {per_tensor!r}")
    return bits, per_tensor


def ask_next_upload(content: RecordDict, task: Task) -> RecordDict:
    """`content` (codes or a width) asking the device to send, with its report, what `task`
    (PROFILE or BUDGET) would upload for the next round: one message where two would go."""
    content.config_records[CONFIG][NEXT_UPLOAD] = str(task)
    return content


def read_instruction(content: RecordDict) -> tuple[int, Task]:
    config = content.config_records[CONFIG]
    return int(config[ROUND]), Task(config[TASK])


def read_next_upload(content: RecordDict) -> Task | None:
    """The upload asked for with a round's work (`ask_next_upload`); ValueError for another."""
    value = content.config_records[CONFIG].get(NEXT_UPLOAD)
    if value is None:
        return None
    if value not in (Task.PROFILE, Task.BUDGET):
        raise ValueError(
            f"{NEXT_UPLOAD!r} must be {Task.PROFILE!r} or {Task.BUDGET!r}, got {value!r}"
        )
    return Task(value)


def read_codes(content: RecordDict) -> bytes:
    return bytes(content.config_records[CONFIG][PAYLOAD])


# -- device to cloud ---------------------------------------------------------------------------


def partition_content(partition: int) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord({PARTITION: int(partition)})})


def upload_content(budget: int, profile: np.ndarray | None) -> RecordDict:
    record = ConfigRecord({BUDGET: int(budget)})
    if profile is not None:
        record[PROFILE] = np.ascontiguousarray(profile, dtype=PROFILE_DTYPE).tobytes()
    return RecordDict({UPLOAD: record})


def with_upload(content: RecordDict, upload: RecordDict) -> RecordDict:
    """A report carrying the next round's upload (`upload_content`) beside it."""
    content.config_records[UPLOAD] = upload.config_records[UPLOAD]
    return content


def split_upload(content: RecordDict) -> tuple[RecordDict, RecordDict | None]:
    """(the reply without its upload record, the upload alone or None): a report that carries
    the next round's upload, taken apart so each part is checked as if it came alone."""
    if UPLOAD not in content.config_records:
        return content, None
    rest = RecordDict({key: record for key, record in content.items() if key != UPLOAD})
    return rest, RecordDict({UPLOAD: content.config_records[UPLOAD]})


def report_content(report: dict[str, float]) -> RecordDict:
    values = {key: float(value) for key, value in report.items()}
    return RecordDict({METRICS: MetricRecord(values)})


def fit_content(weights: dict[str, torch.Tensor], examples: int, train_ms: float) -> RecordDict:
    metrics = MetricRecord({NUM_EXAMPLES: int(examples), TRAIN_MS: float(train_ms)})
    return RecordDict({ARRAYS: ArrayRecord(weights), METRICS: metrics})


def timed(content: RecordDict, device_seconds: float) -> RecordDict:
    """`content` with the simulated seconds the phone took to produce it, inside the reply's own
    record: a record of its own would cost a header and an object id (about 150 B a reply)."""
    record = _reply_record(content)
    if record is None:
        raise ValueError(f"a reply needs a {METRICS!r} or {UPLOAD!r} record to carry its time")
    record[DEVICE_S] = float(device_seconds)
    return content


def _reply_record(content: RecordDict) -> ConfigRecord | MetricRecord | None:
    """The record that carries a reply's device time: its metrics (reports, FedAvg), else its
    upload (profile and budget)."""
    if METRICS in content.metric_records:
        return content.metric_records[METRICS]
    return content.config_records.get(UPLOAD)


# -- checking replies: each returns (value, None) or (None, reason) ----------------------------


def _unexpected(
    content: RecordDict,
    configs: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
    arrays: tuple[str, ...] = (),
) -> str | None:
    """A reason when the reply's records are not exactly the expected ones (checked by name and
    type only, so an oversized record is refused without being read)."""
    expected = {**dict.fromkeys(configs, "ConfigRecord"), **dict.fromkeys(metrics, "MetricRecord")}
    expected.update(dict.fromkeys(arrays, "ArrayRecord"))
    found = {
        **{k: "ConfigRecord" for k in content.config_records},
        **{k: "MetricRecord" for k in content.metric_records},
        **{k: "ArrayRecord" for k in content.array_records},
    }
    if found != expected:
        return f"records {sorted(found.items())}, expected {sorted(expected.items())}"
    return None


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_device_seconds(content: RecordDict) -> tuple[float | None, str | None]:
    record = _reply_record(content)
    value = None if record is None else record.get(DEVICE_S)
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return None, f"no finite {DEVICE_S!r} in the reply's {METRICS!r} or {UPLOAD!r} record"
    if value < 0:
        return None, f"{DEVICE_S} must be >= 0, got {value}"
    return value, None


def read_partition(content: RecordDict) -> tuple[int | None, str | None]:
    value = content.config_records.get(CONFIG, {}).get(PARTITION)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None, f"no valid {PARTITION!r} in the reply"
    return value, None


Upload = tuple[np.ndarray | None, int]  # a device's profile (None: not personalised), budget


def read_upload(
    content: RecordDict, hidden: int | None, max_budget: int, min_budget: int
) -> tuple[Upload | None, str | None]:
    """(profile, budget) of a device's upload; `hidden` None: no profile expected."""
    reason = _unexpected(content, configs=(UPLOAD,))
    if reason:
        return None, reason
    record = content.config_records[UPLOAD]
    allowed = {BUDGET, DEVICE_S} if hidden is None else {BUDGET, PROFILE, DEVICE_S}
    if set(record) - allowed:
        return None, f"unexpected upload keys {sorted(set(record) - allowed)}"
    budget = record.get(BUDGET)
    if isinstance(budget, bool) or not isinstance(budget, int):
        return None, f"budget must be an integer, got {type(budget).__name__}"
    if not min_budget <= budget <= max_budget:
        return None, f"budget {budget} B outside the tier's range {min_budget}..{max_budget} B"
    if hidden is None:
        return (None, budget), None
    raw = record.get(PROFILE)
    expected = hidden * np.dtype(PROFILE_DTYPE).itemsize
    if not isinstance(raw, bytes) or len(raw) != expected:
        size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        return None, f"profile must be {expected} bytes, got {size}"
    profile = np.frombuffer(raw, dtype=PROFILE_DTYPE)
    if not np.isfinite(profile).all():
        return None, "profile has non-finite values"
    return (profile, budget), None


def read_report(content: RecordDict) -> tuple[dict[str, float] | None, str | None]:
    reason = _unexpected(content, metrics=(METRICS,))
    if reason:
        return None, reason
    record = content.metric_records[METRICS]
    extra = set(record) - set(REPORT_KEYS) - set(CODE_COLUMNS) - {DEVICE_S}
    if extra:
        return None, f"unexpected report keys {sorted(extra)}"
    missing = [key for key in REPORT_KEYS if key not in record]
    if missing:
        return None, f"report lacks {missing}"
    values = {key: record[key] for key in (*REPORT_KEYS, *CODE_COLUMNS) if key in record}
    if not all(_is_finite_number(value) and value >= 0 for value in values.values()):
        return None, "report values must be finite numbers >= 0"
    if any(values[key] > 1 for key in METRIC_COLUMNS) or values["avg_bits"] > 32:
        return None, "metrics must be in [0, 1] and avg_bits in [0, 32]"
    if any(float(values[key]) != int(values[key]) for key in CODE_COLUMNS if key in values):
        return None, "code counts must be whole numbers"
    report = {key: float(value) for key, value in values.items()}
    return report, None


def read_weights(
    content: RecordDict, reference: dict[str, tuple[tuple[int, ...], str]]
) -> tuple[int | None, str | None]:
    """Check a FedAvg reply's weights against the global model's names, shapes and dtypes, and
    its metrics; returns the device's training milliseconds."""
    reason = _unexpected(content, metrics=(METRICS,), arrays=(ARRAYS,))
    if reason:
        return None, reason
    arrays, metrics = content.array_records[ARRAYS], content.metric_records[METRICS]
    if set(metrics) - {DEVICE_S} != {NUM_EXAMPLES, TRAIN_MS}:
        return (
            None,
            f"FedAvg reply metrics must be {NUM_EXAMPLES!r} and {TRAIN_MS!r}: {sorted(metrics)}",
        )
    if set(arrays) != set(reference):
        return None, "weights do not match the model's tensors"
    # Shapes and dtypes first, from the metadata: an oversized array is refused unread.
    for name, (shape, dtype) in reference.items():
        array = arrays[name]
        if tuple(array.shape) != shape or array.dtype != dtype:
            return None, f"{name}: expected {dtype}{list(shape)}, got {array.dtype}{array.shape}"
        extra = len(array.data) - math.prod(shape) * np.dtype(dtype).itemsize
        if not 0 <= extra <= MAX_NPY_HEADER:
            return None, f"{name}: {len(array.data)} bytes do not match its shape"
        reason = _npy_reason(array.stype, array.data, shape, np.dtype(dtype))
        if reason:
            return None, f"{name}: {reason}"
    for name in reference:
        if not np.isfinite(arrays[name].numpy()).all():
            return None, f"{name} has non-finite values"
    examples = metrics[NUM_EXAMPLES]
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        return None, f"{NUM_EXAMPLES} must be a positive integer"
    train_ms = metrics[TRAIN_MS]
    if not _is_finite_number(train_ms) or train_ms < 0:
        return None, f"{TRAIN_MS} must be a finite number >= 0"
    return float(train_ms), None


def _npy_reason(stype: str, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> str | None:
    """Why `data` is not the .npy serialisation its metadata claims, or None. A device could
    declare one shape and dtype and send another; numpy would then read what the bytes say."""
    if stype != "numpy.ndarray":
        return f"array type {stype!r} is not numpy.ndarray"
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        header_shape, fortran_order, header_dtype = read_header(stream)
    except Exception:  # any failure to parse untrusted bytes is a refusal
        return "bytes are not a valid .npy array"
    if tuple(header_shape) != shape or header_dtype != dtype or fortran_order:
        return (
            f"bytes hold {header_dtype}{list(header_shape)}, not the declared {dtype}{list(shape)}"
        )
    if len(data) != stream.tell() + math.prod(shape) * dtype.itemsize:
        return "bytes do not match the declared size"
    return None


def weight_signature(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(array.shape), array.dtype) for name, array in arrays.items()}


def weights_nbytes(arrays: ArrayRecord) -> int:
    """Payload bytes of the weights themselves (no .npy headers)."""
    return int(
        sum(math.prod(array.shape) * np.dtype(array.dtype).itemsize for array in arrays.values())
    )


def message_bytes(message: Message, content_bytes: int | None = None) -> int:
    """Serialised size of a message: the sum of its deflated Flower objects. `content_bytes`,
    the size of its content's objects, saves serialising content shared by many messages (the
    same weights to every FedAvg device) once per message."""
    if content_bytes is None:
        return _deflated_bytes(message)
    return len(message.deflate()) + content_bytes


def _deflated_bytes(obj: Message | RecordDict) -> int:
    """Bytes of `obj` and its distinct nested objects, each deflated once, as Flower sends them
    (an object id shared by two children is one object)."""
    sizes: dict[str | None, int] = {}

    def visit(item: Any, object_id: str | None) -> None:  # any of Flower's records
        for child_id, child in (item.children or {}).items():
            if child_id not in sizes:
                visit(child, child_id)
        sizes[object_id] = len(item.deflate())

    visit(obj, None)  # the root's own id is never needed: no child can be the root
    return sum(sizes.values())


def content_bytes(content: RecordDict) -> int:
    return _deflated_bytes(content)


def upload_payload_bytes(hidden: int | None) -> int:
    profile = 0 if hidden is None else hidden * np.dtype(PROFILE_DTYPE).itemsize
    return BUDGET_BYTES + profile
