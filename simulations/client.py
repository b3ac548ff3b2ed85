"""A device's answer to each cloud instruction, as Flower records."""

from __future__ import annotations

import functools
import time

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from chord_fl.errors import ChordError
from chord_fl.federation.faults import ERROR, SLOW, damage, damaged_downlink, device_fault
from chord_fl.federation.phone import Phone
from chord_fl.federation.runconfig import RunConfig
from chord_fl.federation.world import load_world
from chord_fl.quant.codec import CodecError, pack_codes, unpack_codes
from strategies import protocol
from strategies.protocol import Task

HELD = "chord-held-codes"  # context.state record: the codes this device applied last


class DeviceError(ChordError):
    """A failure the device reports to the cloud as an error reply (not a crash)."""


@functools.lru_cache(maxsize=1)
def device_runtime(config: RunConfig) -> Phone:
    """One runtime per worker process: data and frozen weights are read once."""
    return Phone(load_world(config, train_missing=False), config)


def answer(runtime: Phone, content: RecordDict, partition: int, state: RecordDict) -> RecordDict:
    """The reply to `content`, with the simulated seconds the phone took (wall time scaled by
    its tier's speed). Raises DeviceError for codes that do not decode."""
    started = time.perf_counter()
    round_, task = protocol.read_instruction(content)
    fault = device_fault(runtime.config, round_, partition)
    if fault == ERROR:
        raise RuntimeError(f"injected fault: partition {partition} crashes in round {round_}")
    next_task = _next_task(runtime, content, round_)
    reply = _work(runtime, content, round_, task, partition, state)
    if next_task is not None:
        reply = protocol.with_upload(reply, _upload(runtime, next_task, partition, round_ + 1))
    seconds = (time.perf_counter() - started) / runtime.world.tier(partition).speed
    if fault == SLOW:
        seconds += runtime.config.round_timeout  # answers after the round's deadline
    return protocol.timed(reply, seconds)


def _work(
    runtime: Phone,
    content: RecordDict,
    round_: int,
    task: Task,
    partition: int,
    state: RecordDict,
) -> RecordDict:
    if task in (Task.PROFILE, Task.BUDGET):
        return _upload(runtime, task, partition, round_)
    if task is Task.CODES:
        return _apply_codes(runtime, content, round_, partition, state)
    if task is Task.UNIFORM:
        try:
            bits, per_tensor = protocol.read_uniform(content)
        except ValueError as exc:
            raise DeviceError(f"uniform instruction rejected: {exc}") from exc
        return protocol.report_content(
            runtime.apply_uniform(partition, round_, bits, per_tensor).as_dict()
        )
    if task is Task.FP32:
        return protocol.report_content(runtime.evaluate_fp32(partition, round_).as_dict())
    weights = content.array_records[protocol.ARRAYS].to_torch_state_dict()
    if task is Task.FIT:
        return protocol.fit_content(*runtime.local_fit(weights, partition, round_))
    uniform = task is Task.WEIGHTS_UNIFORM
    return protocol.report_content(
        runtime.evaluate_weights(weights, partition, round_, uniform).as_dict()
    )


def _upload(runtime: Phone, task: Task, partition: int, round_: int) -> RecordDict:
    profile = runtime.profile(partition, round_) if task is Task.PROFILE else None
    return protocol.upload_content(runtime.budget(partition), profile)


def _next_task(runtime: Phone, content: RecordDict, round_: int) -> Task | None:
    """What the cloud asks this device to upload for the next round with its report, if any."""
    try:
        task = protocol.read_next_upload(content)
    except ValueError as exc:
        raise DeviceError(f"instruction rejected: {exc}") from exc
    if task is not None and round_ >= runtime.config.rounds:
        raise DeviceError(f"asked for round {round_ + 1}'s upload in the run's last round")
    return task


def _apply_codes(
    runtime: Phone, content: RecordDict, round_: int, partition: int, state: RecordDict
) -> RecordDict:
    count = runtime.world.prepared.channels.channels
    held = state.config_records.get(HELD)
    base = unpack_codes(held[protocol.PAYLOAD], count) if held is not None else None
    payload = protocol.read_codes(content)
    mask = damaged_downlink(runtime.config, round_, partition)
    if mask is not None:
        payload = damage(payload, mask)
    try:
        codes, report = runtime.apply_codes(partition, round_, payload, base)
    except CodecError as exc:
        # What this device holds no longer matches the cloud's view: ask for full codes.
        state.config_records.pop(HELD, None)
        raise DeviceError(f"codes rejected ({exc.reason}): {exc}") from exc
    state[HELD] = ConfigRecord({protocol.PAYLOAD: pack_codes(np.asarray(codes))})
    return protocol.report_content(report.as_dict())
