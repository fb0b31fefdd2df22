"""FSDP parts that one in-process rank can check: which blocks are sharded, whole state dicts, release."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

import qdistill
from qdistill.train import fsdp
from qdistill.train.distributed import wrap

transformers = pytest.importorskip("transformers")
from tiny_transformers import bert_classifier, llama  # noqa: E402

IDS = torch.tensor([[3, 7, 1, 9, 4, 0], [5, 2, 8, 0, 6, 1]])


_llama = llama


def _bert():
    return bert_classifier(vocab_size=12, hidden_size=16, num_hidden_layers=3, intermediate_size=24)


def test_blocks_are_the_transformer_layers():
    llama, bert = _llama(), _bert()
    assert fsdp.blocks(llama) == list(llama.model.layers)
    assert fsdp.blocks(bert) == list(bert.bert.encoder.layer)
    assert fsdp.blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())) == []


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_shard_then_release_keeps_the_model(one_process_group):
    teacher = _llama()
    student = qdistill.make_student(teacher, qdistill.QuantConfig(method="lsq", weight_bits=2, act_bits=4), IDS)
    objective = qdistill.build_objective("sqakd", student, teacher)
    plain = copy.deepcopy(student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    wrap(objective, torch.device("cpu"), "fsdp")

    assert fsdp.is_sharded(student) and not fsdp.is_sharded(teacher)
    assert type(student.model.layers[0]).__name__ == "FSDPLlamaDecoderLayer"
    steps = [p for n, p in student.named_parameters() if n.endswith("act_quant.step")]
    assert steps and all(type(p) is torch.nn.Parameter for p in steps)  # 0-dim: kept whole
    assert type(student.model.embed_tokens.weight).__name__ == "DTensor"

    whole = fsdp.full_state_dict(student)
    assert whole.keys() == before.keys()
    assert all(torch.equal(whole[k], v) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(student(IDS).logits, plain(IDS).logits)

    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    student(IDS).logits.square().mean().backward()
    opt.step()
    saved = fsdp.full_optimizer_state(opt)
    assert all(type(s["momentum_buffer"]) is torch.Tensor for s in saved["state"].values())
    opt2 = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    fsdp.load_optimizer_state(opt2, saved)
    reloaded = {i: s["momentum_buffer"] for i, s in opt2.state_dict()["state"].items()}
    assert reloaded.keys() == saved["state"].keys()
    assert {type(m).__name__ for m in reloaded.values()} == {"DTensor", "Tensor"}  # shards, and whole 0-dim ones
    for i, m in reloaded.items():
        assert torch.equal(m.full_tensor() if hasattr(m, "full_tensor") else m, saved["state"][i]["momentum_buffer"])

    fsdp.load_state_dict(student, before)  # back to the calibrated weights
    fsdp.release(student)
    assert not fsdp.is_sharded(student) and type(student.model.layers[0]).__name__ == "LlamaDecoderLayer"
    assert all(type(p) is torch.nn.Parameter for p in student.parameters())
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():
        assert torch.equal(student(IDS).logits, plain(IDS).logits)
