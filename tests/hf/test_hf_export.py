"""`qdistill export RUN --format packed` on a Hugging Face run folder: packed HF safetensors, exact reload."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from qdistill.cli import main
from qdistill.experiment import load_run, run_experiment
from qdistill.export.hf_packed import load_hf_packed
from qdistill.models.hf import build_hf_model
from qdistill.quant.intform import IntLinear

from .test_hf_run import _config


def test_cli_exports_an_hf_run_as_packed_safetensors_that_reload_exactly(tiny_llama, tmp_path, capsys):
    run = tmp_path / "run"
    run_experiment(_config(tiny_llama, run, weight_bits=3, per_channel=False, group_size=16, weight_init="minmax"))
    assert main(["export", str(run), "--format", "packed", "--images", "40"]) == 0
    assert "on 48 tokens" in capsys.readouterr().out  # 40 tokens round up to 3 blocks of 16
    path = run / "model.packed.safetensors"
    report = json.loads((run / "model.packed.safetensors.json").read_text())
    assert report["parity"]["bit_exact"] and report["architecture"] == "LlamaForCausalLM"
    assert (run / "model.packed.safetensors.md").is_file()
    student, _, _ = load_run(run)
    layer = "model.layers.0.self_attn.o_proj"
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["layers"])[layer]["bits"] == 3
        zero = f.get_tensor(f"{layer}.weight_zero_point")
    assert torch.equal(zero, student.get_submodule(layer).weight_quant.zero_point)  # the trained student's own
    reloaded = load_hf_packed(path, build_hf_model(run, "causal_lm"))
    assert isinstance(reloaded.get_submodule(layer), IntLinear)
    ids = torch.randint(0, student.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)


def test_onnx_export_of_an_hf_run_is_one_line_error(tiny_llama, tmp_path, capsys):
    run = tmp_path / "run"
    run_experiment(_config(tiny_llama, run))
    assert main(["export", str(run)]) == 2
    assert "export it with --format packed" in capsys.readouterr().err
    assert not (run / "model.onnx").exists()
