"""A device's answer to each cloud instruction, as Flower records."""

from __future__ import annotations

import functools

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from chord_fl.device import DeviceRuntime
from chord_fl.quant.codec import pack_codes, unpack_codes
from chord_fl.runconfig import RunConfig
from chord_fl.world import load_world
from strategies import protocol
from strategies.protocol import Task

HELD = "chord-held-codes"  # context.state record: the codes this device applied last


@functools.lru_cache(maxsize=1)
def device_runtime(config: RunConfig) -> DeviceRuntime:
    """One runtime per worker process: data and frozen weights are read once."""
    return DeviceRuntime(load_world(config, train_missing=False), config)


def answer(
    runtime: DeviceRuntime, content: RecordDict, partition: int, state: RecordDict
) -> RecordDict:
    round_, task = protocol.read_instruction(content)
    if task in (Task.PROFILE, Task.BUDGET):
        profile = runtime.profile(partition, round_) if task is Task.PROFILE else None
        return protocol.upload_content(runtime.budget(partition), profile)
    if task is Task.CODES:
        count = runtime.world.prepared.channels.channels
        held = state.config_records.get(HELD)
        base = unpack_codes(held[protocol.CODES], count) if held is not None else None
        codes, report = runtime.apply_codes(partition, round_, protocol.read_codes(content), base)
        state[HELD] = ConfigRecord({protocol.CODES: pack_codes(np.asarray(codes))})
        return protocol.report_content(report.as_dict())
    if task is Task.FP32:
        return protocol.report_content(runtime.evaluate_fp32(partition, round_).as_dict())
    weights = content.array_records[protocol.ARRAYS].to_torch_state_dict()
    if task is Task.FIT:
        return protocol.fit_content(*runtime.local_fit(weights, partition, round_))
    uniform = task is Task.WEIGHTS_UNIFORM
    return protocol.report_content(
        runtime.evaluate_weights(weights, partition, round_, uniform).as_dict()
    )
