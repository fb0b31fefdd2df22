"""Packed low-bit safetensors for transformers models: named parts, plain safetensors, exact reload."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from qdistill.export.hf_packed import export_hf_packed, load_hf_packed
from qdistill.quant import QuantConfig, quantize
from qdistill.quant.intform import IntLinear

T = pytest.importorskip("transformers")
from tiny_transformers import gpt2, llama  # noqa: E402


def _llama():
    return llama(hidden_size=32, intermediate_size=64, num_key_value_heads=2, vocab_size=100)


@pytest.mark.parametrize(
    ("build", "qcfg", "layer"),
    [
        (
            _llama,
            QuantConfig(method="lsq", weight_bits=4, act_bits=8, group_size=16, act_granularity="token"),
            "model.layers.0.self_attn.q_proj",
        ),
        (
            gpt2,
            QuantConfig(method="ewgs", weight_bits=2, act_bits=None, group_size=8),
            "transformer.h.0.attn.c_attn",
        ),
        (  # asymmetric weights: a zero point per group travels with the levels
            _llama,
            QuantConfig(method="lsq", weight_bits=3, act_bits=None, group_size=16, weight_init="minmax"),
            "model.layers.1.mlp.down_proj",
        ),
        (
            gpt2,
            QuantConfig(method="ewgs", weight_bits=4, act_bits=None, group_size=16, weight_init="mse"),
            "transformer.h.1.mlp.c_fc",
        ),
    ],
)
def test_reload_into_the_transformers_class_is_exact(build, qcfg, layer, tmp_path):
    teacher = build()
    teacher.save_pretrained(tmp_path / "teacher")
    model_cls = type(teacher)
    ids = torch.randint(0, 100, (2, 9))
    student = quantize(model_cls.from_pretrained(tmp_path / "teacher"), qcfg, calib_data=ids)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)  # train a little: levels must be the student's own
    for _ in range(2):
        student(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    student.eval()
    layers = export_hf_packed(student, tmp_path / "student.safetensors")
    with safe_open(str(tmp_path / "student.safetensors"), "pt") as f:  # plain safetensors
        keys, meta = set(f.keys()), f.metadata()
        packed = f.get_tensor(f"{layer}.weight_packed")
        scale = f.get_tensor(f"{layer}.weight_scale")
        zero = f.get_tensor(f"{layer}.weight_zero_point")
    assert {f"{layer}.weight_packed", f"{layer}.weight_scale", f"{layer}.weight_zero_point"} <= keys
    info = json.loads(meta["layers"])[layer]
    assert info["bits"] == qcfg.weight_bits and info["group_size"] == qcfg.group_size and layers[layer] == info
    rows, cols = info["shape"]
    assert packed.dtype == torch.uint8 and packed.numel() == rows * cols * qcfg.weight_bits // 8
    assert scale.shape == (rows, 1) and cols == qcfg.group_size
    if qcfg.weight_init != "default":  # integer zero points, one per group, not one shared value
        assert torch.equal(zero, zero.round()) and zero.unique().numel() > 1
    reloaded = load_hf_packed(tmp_path / "student.safetensors", model_cls.from_pretrained(tmp_path / "teacher"))
    assert isinstance(reloaded.get_submodule(layer), IntLinear) and type(reloaded) is model_cls
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)
    if model_cls is T.GPT2LMHeadModel:
        assert reloaded.lm_head.weight is reloaded.transformer.wte.weight  # still tied


def test_not_an_hf_packed_file(tmp_path):
    from safetensors.torch import save_file

    from qdistill.errors import CheckpointError, MissingFileError

    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="not a qdistill Hugging Face packed model"):
        load_hf_packed(tmp_path / "x.safetensors", torch.nn.Linear(1, 1))
    with pytest.raises(MissingFileError):
        load_hf_packed(tmp_path / "missing.safetensors", torch.nn.Linear(1, 1))
