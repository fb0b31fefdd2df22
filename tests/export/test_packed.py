"""Bit-packed safetensors: bit-exact round trip, sizes that follow the bits, a model card."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import qdistill
from qdistill import QuantConfig, make_student
from qdistill.export import export_packed, load_packed, write_model_card
from qdistill.export.packed import pack_bits, unpack_bits

from .tiny import METHODS, tiny_student


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_pack_unpack(bits):
    levels = np.random.default_rng(bits).integers(0, 2**bits, 1001).astype(np.uint8)
    packed = pack_bits(levels, bits)
    assert packed.nbytes == -(-1001 * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, 1001), levels)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_is_bit_exact(method, bits, images, tmp_path):
    student = tiny_student(method, bits, images, per_channel=bits == 4)
    export_packed(student, tmp_path / "m.safetensors")
    rebuilt = load_packed(tmp_path / "m.safetensors", model=tiny_student(method, bits, images[:8] * 3))
    with torch.no_grad():
        assert torch.equal(student(images), rebuilt(images))


def test_registry_model_rebuilds_alone_and_sizes_follow_bits(tmp_path):
    """A W2 ResNet-20 file is at most 1/12 of its FP32 safetensors file; W4 is larger."""
    torch.manual_seed(0)
    teacher = qdistill.create_model("resnet20").eval()
    fp32 = tmp_path / "fp32.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(fp32))
    x = torch.randn(2, 3, 32, 32)
    sizes = {}
    for bits in (2, 4):
        student = make_student(teacher, QuantConfig(method="ewgs", weight_bits=bits, act_bits=bits), x).eval()
        path = tmp_path / f"w{bits}.safetensors"
        export_packed(student, path, arch={"name": "resnet20", "num_classes": 10, "in_channels": 3})
        with torch.no_grad():
            assert torch.equal(student(x), qdistill.load_packed(path)(x))
        sizes[bits] = path.stat().st_size
    assert sizes[2] * 12 <= fp32.stat().st_size
    assert sizes[2] < sizes[4] < fp32.stat().st_size / 6


def test_not_a_packed_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a qdistill packed model"):
        load_packed(path)
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "missing.safetensors")


def test_model_card(tmp_path):
    art = tmp_path / "m.onnx"
    art.write_bytes(b"0" * 2048)
    parity = {"images": 10, "top1_agreement": 100.0, "max_abs_logit_diff": 1e-3, "threshold": 99.5}
    card = write_model_card(
        art,
        {
            "architecture": "resnet20",
            "method": "lsq W4A4",
            "labels_used": False,
            "parity": parity,
            "layers": [{"name": "layer1.0.conv1", "weight_bits": 4, "act_bits": 4}],
        },
    )
    text = card.read_text()
    assert "resnet20" in text and "| labels used in training | no |" in text and "100.00%" in text and "2.0 KiB" in text


@pytest.mark.parametrize("what", ["checkpoint", "plain safetensors", "missing"])
def test_files_that_are_not_packed_models_are_one_line_errors(what, tmp_path):
    from qdistill.errors import CheckpointError, MissingFileError

    path = tmp_path / "m.safetensors"
    if what == "checkpoint":
        torch.save({"w": torch.zeros(2)}, path)
    elif what == "plain safetensors":
        save_file({"w": torch.zeros(2)}, str(path))
    error = MissingFileError if what == "missing" else CheckpointError
    with pytest.raises(error, match="not found" if what == "missing" else "is not a"):
        load_packed(path)


def test_packed_file_holds_the_integer_form(images, tmp_path):
    """create -> quantize -> convert -> load: the rebuilt model holds int8 LSQ levels, no float weights."""
    from safetensors import safe_open

    from qdistill.quant.intform import IntModule

    student = tiny_student("lsq", 4, images)
    export_packed(student, tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "np") as f:
        assert f.get_tensor("block1.conv1.weight_levels").nbytes == 8 * 8 * 9 * 4 // 8  # 4 bits a weight
    rebuilt = load_packed(tmp_path / "m.safetensors", model=tiny_student("lsq", 4, images[:8]))
    assert isinstance(rebuilt.block1.conv1, IntModule) and rebuilt.block1.conv1.weight_levels.dtype == torch.int8
    assert "block1.conv1.weight" not in rebuilt.state_dict()


def test_older_packed_format_is_refused(tmp_path):
    path = tmp_path / "old.safetensors"
    save_file({"state": torch.zeros(1)}, str(path), metadata={"format": "qdistill.packed/1", "qdistill": ""})
    with pytest.raises(ValueError, match="another qdistill version"):
        load_packed(path)
