"""The 8-bit master: what the one-time download holds, how the device decodes it, what it costs."""

import numpy as np
import pytest
import torch

from chord_fl.errors import ConfigError
from chord_fl.experiment import Setup
from chord_fl.federation.runconfig import RunConfig
from chord_fl.models import seeded_backbone
from chord_fl.quant.channels import channel_map, channel_rows
from chord_fl.quant.master import decode_master, int8_master, master_arrays, master_bytes
from chord_fl.quant.quantizer import PreparedModel

NUM_ITEMS = 40


@pytest.fixture(params=["sasrec", "caser"])
def frozen(request):
    return seeded_backbone(request.param, NUM_ITEMS, seed=3, hidden=16, max_len=10).eval()


def test_master_holds_int8_levels_and_fp16_scales_and_a_quarter_of_the_bytes(frozen):
    channels = channel_map(frozen)
    arrays = master_arrays(frozen, "int8")
    quantized = {tensor.name for tensor in frozen.quantizable_tensors()}
    for name, tensor in frozen.state_dict().items():
        if name in quantized:
            assert arrays[name + ".levels"].dtype == np.int8
            assert arrays[name + ".levels"].size == tensor.numel()
            assert arrays[name + ".scales"].dtype == np.float16
        else:
            np.testing.assert_array_equal(arrays[name], tensor.numpy())
    held = sum(a.nbytes for a in arrays.values())
    assert held == master_bytes(channels, "int8")
    fp32 = sum(t.numel() * 4 for t in frozen.state_dict().values())
    assert master_bytes(channels, "fp32") == fp32
    # Each quantized weight takes 1 byte instead of 4, each channel adds a 2-byte scale.
    assert held == fp32 - 3 * channels.weights + 2 * channels.channels


def test_decoded_master_is_within_half_a_step_of_every_weight(frozen):
    decoded = decode_master(master_arrays(frozen, "int8"), frozen)
    arrays = master_arrays(frozen, "int8")
    for group in channel_map(frozen).groups:
        rows = [
            channel_rows(dict(model.named_parameters())[group.name].detach(), group.channel_axis)
            for model in (frozen, decoded)
        ]
        error = (rows[1] - rows[0]).abs()
        step = torch.from_numpy(arrays[group.name + ".scales"].astype(np.float32))[:, None]
        inside = rows[0].abs() <= 127 * step  # clipping may move a channel's extremes further
        assert (error <= step / 2 + 1e-6)[inside].all()
        assert inside.float().mean() > 0.9
    assert frozen.state_dict().keys() == decoded.state_dict().keys()


def test_the_8_bit_code_reproduces_the_master_and_lower_codes_derive_from_it(frozen):
    master = int8_master(frozen)
    prepared = PreparedModel(master)
    eight = prepared.table.bits.index(8)
    assert np.abs(prepared.errors[:, eight]).max() == 0.0  # nothing to add beyond the master
    codes = np.full(prepared.channels.channels, eight)
    params = dict(prepared.quantize(codes).model.named_parameters())
    for name, weight in master.named_parameters():
        if name in {g.name for g in prepared.channels.groups}:
            torch.testing.assert_close(params[name], weight, rtol=0, atol=0)


def test_setup_and_run_config_accept_the_master_only_where_devices_quantize(tmp_path):
    assert Setup(master="int8").master == "int8"
    with pytest.raises(ConfigError, match="master must be one of"):
        Setup(master="int4")
    RunConfig(strategy="chord", master="int8")
    RunConfig(strategy="uniform", master="int8")
    for strategy in ("fp32", "fedavg", "fedavg-uniform"):
        with pytest.raises(ConfigError, match=f"not '{strategy}'"):
            RunConfig(strategy=strategy, master="int8")


def test_a_master_names_another_backbone(tmp_path):
    fp32, int8 = Setup(init="random"), Setup(init="random", master="int8")
    assert fp32.backbone_identity(NUM_ITEMS) != int8.backbone_identity(NUM_ITEMS)
