"""SQuaT and GoR on tiny random-init Hugging Face transformers (built from configs, nothing downloaded)."""

import pytest
import torch

from qdistill import QuantConfig
from qdistill.distill import build_objective
from qdistill.distill.student import make_student
from qdistill.distill.tap_rules import squat_layer
from qdistill.errors import ConfigError

from .helpers import train_steps

transformers = pytest.importorskip("transformers")
from tiny_transformers import bert_classifier, family, llama  # noqa: E402

IDS = torch.tensor([[3, 7, 1, 9, 4, 0], [5, 2, 8, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])


def _bert() -> torch.nn.Module:
    return bert_classifier(
        vocab_size=12,
        hidden_size=16,
        intermediate_size=24,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


_llama = llama


CASES = {
    "bert": (_bert, "bert.encoder.layer.1.intermediate.dense"),  # SQuaT's BERT code: the FFN's first layer
    "llama": (_llama, "model.layers.1.mlp.down_proj"),  # the MLP output projection of the last block
}


def _pair(arch: str):
    torch.manual_seed(0)
    teacher = CASES[arch][0]()
    student = make_student(teacher, QuantConfig(method="lsq", weight_bits=2, act_bits=2), IDS)
    return student, teacher


@pytest.mark.parametrize("arch", sorted(CASES))
def test_squat_taps_the_last_blocks_ffn_layer_and_trains(arch):
    student, teacher = _pair(arch)
    layer = CASES[arch][1]
    assert squat_layer(student) == layer
    batch = {"input_ids": IDS, "attention_mask": MASK}
    with build_objective("squat", student, teacher) as objective:
        assert objective.features._taps[0].names == [f"{layer}.act_quant"]
        assert objective.features._taps[1].names == [f"{layer}:input"]
        loss, logs = objective(batch)
        loss.backward()
        assert logs["feat"] > 0 and torch.isfinite(loss)
        first_blocks = ("layers.0.self_attn.q_proj", "layer.0.attention.self.query")
        first = next(m for n, m in student.named_modules() if n.endswith(first_blocks))
        assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
        losses = train_steps(objective, batch, None, 3, lr=1e-3)
        assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("arch", sorted(CASES))
def test_feature_and_kd_terms_ignore_padded_tokens(arch):
    student, teacher = _pair(arch)  # (llama is the case where padding changes token logits and features)
    with build_objective("gor", student, teacher) as objective:
        objective.eval()
        _, logs = objective({"input_ids": IDS, "attention_mask": MASK})
        # other token ids in the padding, attended to by no real token under a causal/padding mask
        padded = torch.where(MASK.bool(), IDS, torch.full_like(IDS, 11))
        _, again = objective({"input_ids": padded, "attention_mask": MASK})
    assert float(again["kd"]) == pytest.approx(float(logs["kd"]), rel=1e-5)
    assert float(again["feat"]) == pytest.approx(float(logs["feat"]), rel=1e-5)


# Families whose FFN layers have other names: the layer is found by shape in the last block.
BY_SHAPE = {
    "gpt2": (("GPT2LMHeadModel", "GPT2Config", {"n_embd": 16}), "transformer.h.1.mlp.c_proj"),
    "gpt_neox": (
        ("GPTNeoXForCausalLM", "GPTNeoXConfig", {"hidden_size": 16, "intermediate_size": 32}),
        "gpt_neox.layers.1.mlp.dense_4h_to_h",
    ),
    "opt": (
        ("OPTForCausalLM", "OPTConfig", {"hidden_size": 16, "ffn_dim": 32, "word_embed_proj_dim": 16}),
        "model.decoder.layers.1.fc2",
    ),
    "distilbert": (  # an encoder: the FFN's first layer, as BERT's intermediate.dense
        ("DistilBertForSequenceClassification", "DistilBertConfig", {"dim": 16, "hidden_dim": 32, "num_labels": 3}),
        "distilbert.transformer.layer.1.ffn.lin1",
    ),
    "albert": (  # one shared layer run at every depth: its stacks hold a single block
        (
            "AlbertForSequenceClassification",
            "AlbertConfig",
            {"embedding_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_labels": 3},
        ),
        "albert.encoder.albert_layer_groups.0.albert_layers.0.ffn",
    ),
}


@pytest.mark.parametrize("arch", sorted(BY_SHAPE))
def test_squat_finds_the_ffn_layer_of_other_families_by_shape(arch):
    (model, config, sizes), layer = BY_SHAPE[arch]
    teacher = family(model, config, vocab_size=12, **sizes)
    student = make_student(teacher, QuantConfig(method="lsq", weight_bits=2, act_bits=8), {"input_ids": IDS})
    assert squat_layer(student) == layer
    with build_objective("squat", student, teacher) as objective:
        assert objective.features._taps[1].names == [f"{layer}:input"]
        loss, logs = objective({"input_ids": IDS, "attention_mask": MASK})
    assert logs["feat"] > 0 and torch.isfinite(loss)


def test_a_weight_only_transformer_student_has_no_squat_layer():
    teacher = _llama()
    student = make_student(teacher, QuantConfig(method="lsq", weight_bits=4, act_bits=None), {"input_ids": IDS})
    with pytest.raises(ConfigError, match="no transformer FFN layer with an activation quantizer"):
        squat_layer(student)
