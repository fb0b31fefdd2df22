"""Transformer encoders through `export_onnx` (torch.onnx dynamo front end, qdistill's QDQ ops).

Each fixture exports once (torch.export and its decompositions take tens of seconds on a loaded
CPU); the tests read the written file and the report.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qdistill import QuantConfig, convert, make_student
from qdistill.errors import ConfigError, ExportError
from qdistill.export import export_onnx
from qdistill.export import transformer as tf_export
from qdistill.export.bench import ort_session
from qdistill.export.parity import torch_logits

transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")
from tiny_transformers import bert_classifier, vit_classifier  # noqa: E402


def _bert() -> torch.nn.Module:
    model = bert_classifier(id2label={0: "neg", 1: "neutral", 2: "pos"})
    with torch.no_grad():  # spread the classes (random-init logits are ~1e-2 apart) so top-1 means something
        model.classifier.weight.normal_(0.0, 10.0)
    return model


def _padded_batch(rows: int = 16, tokens: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[::2, tokens - 4 :] = 0  # every other row padded: its last 4 tokens are masked
    return {"input_ids": torch.randint(1, 100, (rows, tokens), generator=g), "attention_mask": mask}


def _export(model: torch.nn.Module, example, folder: Path, name: str, **kw) -> tuple[Path, dict]:
    path = folder / f"{name}.onnx"
    return path, export_onnx(model, example, path, min_agreement=99.5, **kw)


@pytest.fixture(scope="module")
def bert_w4a8(tmp_path_factory):
    """W4 per-channel, A8 per token: the README's transformers recipe."""
    batch = _padded_batch()
    quant = QuantConfig(method="lsq", weight_bits=4, act_bits=8, act_granularity="token", per_channel=True)
    student = make_student(_bert(), quant, batch).eval()
    return student, batch, *_export(student, batch, tmp_path_factory.mktemp("w4a8"), "bert")


@pytest.fixture(scope="module")
def bert_w8a8(tmp_path_factory):
    """W8 per tensor, A8 per tensor (learned LSQ ranges: QuantizeLinear nodes), embeddings quantized."""
    batch = _padded_batch()
    quant = QuantConfig(method="lsq", weight_bits=8, act_bits=8, quantize_embeddings=True)
    student = make_student(_bert(), quant, batch).eval()
    return student, batch, *_export(student, batch, tmp_path_factory.mktemp("w8a8"), "bert")


@pytest.fixture(scope="module")
def vit_converted(tmp_path_factory):
    """A ViT, W4A4 per tensor (uint8 levels clipped to 0..15), exported from its `convert`-ed integer form."""
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    vit = vit_classifier(patch_size=4, num_labels=4)
    student = make_student(vit, QuantConfig(method="lsq", weight_bits=4, act_bits=4), images).eval()
    integer = convert(copy.deepcopy(student))
    return student, images, *_export(integer, images, tmp_path_factory.mktemp("vit"), "vit")


def _session_logits(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort_session(path, 1).run(None, feeds)[0]


def _numpy(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def _inits(path: Path) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("fixture", ["bert_w4a8", "bert_w8a8"])
def test_bert_logits_match_the_trained_model(fixture, request) -> None:
    student, batch, path, report = request.getfixturevalue(fixture)
    want = torch_logits(student, batch)
    got = _session_logits(path, _numpy(batch))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert report["parity"]["top1_agreement_decisive"] == 100.0 and report["parity"]["decisive_images"] > 0
    assert report["parity"]["max_abs_logit_diff"] == pytest.approx(float(np.abs(got - want).max()), abs=1e-6)
    assert json.loads(Path(str(path) + ".json").read_text())["parity"] == report["parity"]
    assert (
        "| input | input_ids + attention_mask, 12 tokens in the example (dynamic) |"
        in Path(str(path) + ".md").read_text()
    )


@pytest.mark.parametrize("fixture", ["bert_w4a8", "bert_w8a8", "vit_converted"])
def test_weights_are_int8_levels_on_the_trained_grid(fixture, request) -> None:
    """Every quantized weight is an int8 initialiser behind a DequantizeLinear, and ints x scale is
    the fake-quant weight of the trained model (decoded by hand here)."""
    student, _, path, report = request.getfixturevalue(fixture)
    graph, inits = onnx.load(str(path)).graph, _inits(path)
    dq_inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    layers = [layer for layer in report["layers"] if layer["weight"] == "int8 per-channel"]
    assert layers and len(layers) == len(report["layers"])
    for layer in layers:
        name = layer["name"]
        ints, scale = inits[f"{name}.ints"], inits[f"{name}.scale"]
        assert ints.dtype == np.int8 and f"{name}.ints" in dq_inputs
        bits = layer["weight_bits"]
        assert ints.min() >= -(2 ** (bits - 1)) and ints.max() <= 2 ** (bits - 1) - 1
        module = student.get_submodule(name)
        with torch.no_grad():
            fake = module.quant_weight().numpy()  # (out, in) for Linear, (vocab, dim) for Embedding
        decoded = ints.T * scale[:, None] if layer["type"] == "IntLinear" else ints * scale[:, None]
        np.testing.assert_array_equal(decoded.astype(np.float32), fake)


def test_per_tensor_activations_are_quantize_linear_on_the_learned_grid(bert_w8a8) -> None:
    student, _, path, report = bert_w8a8
    graph, inits = onnx.load(str(path)).graph, _inits(path)
    # (scale, zero point) of every QuantizeLinear; identical ones (query/key/value read one tensor
    # and calibrate to one range) are merged by the exporter's optimiser
    written = {(float(inits[n.input[1]]), int(inits[n.input[2]])) for n in graph.node if n.op_type == "QuantizeLinear"}
    want = set()
    for layer in report["layers"]:
        if layer["act"] == "tensor":
            q = student.get_submodule(layer["name"]).act_quant
            # LSQ's grid: step s, levels -2^(b-1)..2^(b-1)-1 (signed input: zero point 128) or 0..2^b-1
            want.add((float(q.interval(torch.zeros(())).step.detach()), 128 if q.signed else 0))
    assert len(want) > 1 and written == want


def test_attention_mask_padding_is_honoured(bert_w4a8) -> None:
    student, batch, path, _ = bert_w4a8
    assert {i.name for i in ort_session(path, 1).get_inputs()} == {"input_ids", "attention_mask"}
    feeds = _numpy(batch)
    base = _session_logits(path, feeds)
    other = feeds["input_ids"].copy()
    masked = feeds["attention_mask"] == 0
    other[masked] = (other[masked] + 37) % 100  # different tokens where the mask hides them
    np.testing.assert_allclose(_session_logits(path, {**feeds, "input_ids": other}), base, atol=1e-5)
    unmasked = _session_logits(path, {**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])})
    assert np.abs(unmasked[::2] - base[::2]).max() > 1e-3 * np.abs(base).max()  # padded rows: the mask matters
    np.testing.assert_allclose(unmasked[1::2], base[1::2], atol=1e-5)


def test_batch_and_sequence_length_stay_dynamic_and_metadata_is_written(bert_w4a8) -> None:
    student, batch, path, _ = bert_w4a8
    short = {k: v[:3, :5] for k, v in batch.items()}
    want = torch_logits(student, short)
    np.testing.assert_allclose(_session_logits(path, _numpy(short)), want, atol=1e-5 * np.abs(want).max())
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props["input_names"] == ["input_ids", "attention_mask"] and props["sequence_length"] == 12
    assert props["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}


def test_vit_from_its_integer_form_matches_the_fake_quant_model(vit_converted) -> None:
    student, images, path, report = vit_converted
    got, want = _session_logits(path, {"pixel_values": images.numpy()}), torch_logits(student, images)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert report["metadata"]["input_names"] == ["pixel_values"] and report["metadata"]["input_size"] == [3, 16, 16]
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == ops.count("Clip") > 0  # 4-bit levels: Q -> Clip -> DQ


def test_gate_refuses_a_corrupted_graph_and_writes_nothing(bert_w4a8, tmp_path, monkeypatch) -> None:
    student, batch, path, _ = bert_w4a8
    corrupted = onnx.load(str(path))
    out = corrupted.graph.output[0].name
    for n in corrupted.graph.node:  # negate the logits: every decisive top-1 moves
        n.output[:] = [o + ".raw" if o == out else o for o in n.output]
    corrupted.graph.node.append(onnx.helper.make_node("Neg", [out + ".raw"], [out]))
    monkeypatch.setattr(tf_export, "to_onnx", lambda *a, **k: corrupted)
    target = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"parity check failed .* top-1 agreement 0\.00%") as e:
        export_onnx(student, batch, target)
    assert "\n" not in str(e.value) and not target.exists() and not Path(str(target) + ".json").exists()


def test_options_and_thresholds_are_checked_before_any_work(tmp_path) -> None:
    model = _bert()
    batch = _padded_batch(2, 4)
    with pytest.raises(ConfigError, match="min_agreement must be a number"):
        export_onnx(model, batch, tmp_path / "m.onnx", min_agreement=101)
    with pytest.raises(ConfigError, match="CNN options"):
        export_onnx(model, batch, tmp_path / "m.onnx", ort_build=True)
    with pytest.raises(ExportError, match="no quantized layer"):
        export_onnx(model, batch, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_cli_exports_a_text_classifier_run(tmp_path, capsys) -> None:
    from hf.conftest import SAMPLE, save_tiny  # the tiny BERT folder and tokenizer of tests/hf

    from qdistill.cli import main
    from qdistill.experiment import RunConfig, load_run, run_experiment

    run = tmp_path / "student"
    cfg = {
        "model": {
            "source": "hf",
            "pretrained": str(save_tiny("bert", tmp_path / "bert")),
            "task": "sequence_classification",
        },
        "data": {"format": "text", "root": str(SAMPLE), "block_size": 48, "test_fraction": 0.25, "batch_size": 8},
        "quant": {"method": "lsq", "weight_bits": 4, "act_bits": 8, "act_granularity": "token"},
        "method": {"name": "sqakd"},
        "train": {"epochs": 1, "progress": False, "device": "cpu"},
        "calib_images": 8,
        "out": str(run),
    }
    run_experiment(RunConfig.from_dict(cfg))
    assert main(["export", str(run), "--images", "12", "--min-agreement", "90"]) == 0
    assert "% on 12 lines" in capsys.readouterr().out  # held-out text lines, not images
    report = json.loads((run / "model.onnx.json").read_text())
    assert report["parity"]["images"] == 12 and "top1_exported" in report["parity"]
    assert report["parity"]["unit"] == "lines" and "12 lines: top-1 agreement" in (run / "model.onnx.md").read_text()
    assert report["metadata"]["input_names"] == ["input_ids", "attention_mask"]
    assert report["metadata"]["sequence_length"] == 48 and report["teacher"] == cfg["model"]["pretrained"]
    from qdistill.export.run import _held_out_lines

    student, run_cfg, _ = load_run(run)
    lines, _ = _held_out_lines(run_cfg, 12)
    assert (lines["attention_mask"] == 0).any()  # padded lines among them
    got = _session_logits(run / "model.onnx", _numpy(lines))
    want = torch_logits(student, lines)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert main(["export", str(run), "--format", "packed"]) == 2
    assert "export it with --format onnx" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "bits", "path"),
    [("lsq", 4, None), ("pact", 4, None), ("dorefa", 4, None), ("ewgs", 4, "shift"), ("ewgs", 1, "half")],
)
def test_export_modules_compute_the_trained_layers(method, bits, path) -> None:
    """The export form (custom ops run eagerly, with ONNX's Q/DQ semantics) computes the fake-quant
    model for every grid kind: integer zero points, a lower bound off the grid (shifted before the
    Q), half-integer zeros (1-bit signed inputs: half a step added after the DQ)."""
    torch.manual_seed(0)
    relu, linear = torch.nn.ReLU, torch.nn.Linear
    net = torch.nn.Sequential(linear(8, 16), relu(), linear(16, 16), relu(), linear(16, 4))
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(3))
    quant = QuantConfig(method=method, weight_bits=4, act_bits=bits, keep_first=False, keep_last=False)
    student = make_student(net, quant, x[:64]).eval()
    if path == "shift":
        with torch.no_grad():  # a learned lower bound a hair below 0 (trained EWGS), on the unsigned inputs
            for m in (student[2], student[4]):
                m.act_quant.lower.fill_(-2e-6)
    form, layers = tf_export.export_form(student)
    assert [layer["weight"] for layer in layers] == ["int8 per-channel"] * 3
    acts = [m for m in form.modules() if isinstance(m, tf_export._QDQActivation)]
    assert len(acts) == 3
    if path:
        assert any(getattr(m, path) is not None for m in acts)
    with torch.no_grad():
        want, got = student(x), form(x)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
