"""The 8-bit master: what the one-time download holds, how the device decodes it, what it costs."""

import numpy as np
import pytest
import torch

from chord_fl.errors import ConfigError
from chord_fl.experiment import Setup
from chord_fl.federation.runconfig import RunConfig
from chord_fl.models import seeded_backbone
from chord_fl.quant.channels import channel_map, channel_rows
from chord_fl.quant.master import (
    FORMAT,
    decode_master,
    int8_master,
    master_arrays,
    master_bytes,
)
from chord_fl.quant.quantizer import PreparedModel

NUM_ITEMS = 40


@pytest.fixture(params=["sasrec", "caser"])
def frozen(request):
    return seeded_backbone(request.param, NUM_ITEMS, seed=3, hidden=16, max_len=10).eval()


def test_master_holds_int8_levels_and_fp16_scales_of_every_matrix(frozen):
    arrays = master_arrays(frozen, "int8")
    expected = 0
    for name, tensor in frozen.state_dict().items():
        if tensor.dim() >= 2:
            levels, scales = arrays[name + ".levels"], arrays[name + ".scales"]
            assert levels.dtype == np.int8 and levels.size == tensor.numel()
            assert scales.dtype == np.float16
            expected += levels.size + 2 * len(scales)
        else:
            np.testing.assert_array_equal(arrays[name], tensor.numpy())
            expected += 4 * tensor.numel()
    assert master_bytes(frozen, "int8") == expected == sum(a.nbytes for a in arrays.values())
    fp32 = sum(t.numel() * 4 for t in frozen.state_dict().values())
    assert master_bytes(frozen, "fp32") == fp32


def test_decoded_master_is_within_half_a_step_of_every_weight(frozen):
    decoded = decode_master(master_arrays(frozen, "int8"), frozen)
    arrays = master_arrays(frozen, "int8")
    axes = {g.name: g.channel_axis for g in channel_map(frozen).groups}
    for name, tensor in frozen.state_dict().items():
        if tensor.dim() < 2:
            torch.testing.assert_close(decoded.state_dict()[name], tensor, rtol=0, atol=0)
            continue
        rows = [
            channel_rows(t[name], axes.get(name, 0))
            for t in (frozen.state_dict(), decoded.state_dict())
        ]
        error = (rows[1] - rows[0]).abs()
        step = torch.from_numpy(arrays[name + ".scales"].astype(np.float32))[:, None]
        inside = rows[0].abs() <= 127 * step  # clipping may move a row's extremes further
        assert (error <= step / 2 + 1e-6)[inside].all()
        assert inside.float().mean() > 0.9


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


def test_a_master_and_its_format_name_another_backbone(tmp_path):
    fp32, int8 = Setup(init="random"), Setup(init="random", master="int8")
    frozen = seeded_backbone("sasrec", NUM_ITEMS, 0)
    assert fp32.backbone_identity(frozen) != int8.backbone_identity(frozen)
    assert int8.backbone_identity(frozen).endswith(f"v{FORMAT}")
    # A seeded backbone's input length follows the data: another length, another backbone.
    shorter = seeded_backbone("sasrec", NUM_ITEMS, 0, max_len=41)
    assert fp32.backbone_identity(shorter) != fp32.backbone_identity(frozen)
