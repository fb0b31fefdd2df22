"""Which layers `quantize` swaps: type families, the input layer and head, tied weights, the summary."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.quant import (
    QUANT_MODULE_MAP,
    QConv1d,
    QEmbedding,
    QLinear,
    QuantConfig,
    calibrate,
    named_quantizers,
    quantize,
    register_quant_module,
)

T = pytest.importorskip("transformers")
from tiny_transformers import bert_classifier, gpt2, vit_classifier  # noqa: E402

tiny_bert, tiny_gpt2 = bert_classifier, gpt2


def text_batch():
    return {"input_ids": torch.randint(0, 100, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}


def test_bert_classifier_stays_float_and_the_encoder_is_quantized_from_a_dict_batch():
    bert = quantize(tiny_bert(), QuantConfig(method="lsq", weight_bits=4, act_bits=4), calib_data=text_batch())
    assert type(bert.classifier) is nn.Linear
    # 6 Linear per layer (q, k, v, attention output, intermediate, output) x 2 layers + the pooler
    assert sum(isinstance(m, QLinear) for m in bert.modules()) == 13
    assert isinstance(bert.bert.encoder.layer[0].attention.self.query, QLinear)  # the input layer is the embedding
    assert all(q.initialized for _, q in named_quantizers(bert))
    kept = {name: why for name, _, why in bert.qdistill_summary.kept}
    assert kept["classifier"] == "output head (quant.keep_last)"
    assert kept["bert.embeddings.word_embeddings"].startswith("embedding")


def test_vit_patch_projection_and_classifier_stay_float():
    vit = quantize(
        vit_classifier(),
        QuantConfig(method="ewgs", weight_bits=4, act_bits=4),
        calib_data=torch.randn(2, 3, 16, 16),
    )
    assert type(vit.classifier) is nn.Linear
    assert type(vit.vit.embeddings.patch_embeddings.projection) is nn.Conv2d
    assert sum(isinstance(m, QLinear) for m in vit.modules()) == 12


def test_gpt2_conv1d_layers_are_quantized_and_the_tied_head_stays_float():
    from qdistill.quant.hf import QHFConv1D

    gpt = quantize(
        tiny_gpt2(),
        QuantConfig(method="lsq", weight_bits=4, act_bits=8, keep_last=False),
        calib_data=text_batch()["input_ids"],
    )
    assert sum(isinstance(m, QHFConv1D) for m in gpt.modules()) == 8  # c_attn, attn c_proj, c_fc, mlp c_proj x 2
    assert type(gpt.lm_head) is nn.Linear and gpt.lm_head.weight is gpt.transformer.wte.weight
    assert ("lm_head", "Linear", "weight tied to transformer.wte, which stays float") in gpt.qdistill_summary.kept


def test_tied_embedding_and_head_quantized_together_stay_one_parameter():
    cfg = QuantConfig(
        method="lsq", weight_bits=4, act_bits=8, keep_first=False, keep_last=False, quantize_embeddings=True
    )
    gpt = quantize(tiny_gpt2(), cfg)
    assert isinstance(gpt.lm_head, QLinear) and isinstance(gpt.transformer.wte, QEmbedding)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight


def test_hf_conv1d_twin_quantizes_per_output_feature_of_the_transposed_weight():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(3, 4)  # nf = 3 outputs, nx = 4 inputs, weight (4, 3)
    steps = torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1, -2, 3], [4, 5, -6], [-7, 0, 7], [2, 2, -8]]) * steps)
    q = quantize(
        nn.Sequential(conv, nn.Linear(3, 3), nn.Linear(3, 3)),
        QuantConfig(method="lsq", weight_bits=4, act_bits=None, per_channel=True, keep_first=False),
    )[0]
    q.weight_quant.step.data.copy_(steps.view(3, 1))  # one step per output feature
    x = torch.randn(5, 4)
    assert torch.allclose(q(x), x @ conv.weight + conv.bias)  # every weight on its grid: nothing rounds
    with torch.no_grad():
        q.weight[0, 2] = 3.4 * 10.0  # rounds to 3 * 10
    assert torch.allclose(q(x)[:, 2], x @ torch.tensor([30.0, -60.0, 70.0, -80.0]))


def test_subclasses_match_and_the_most_specific_registration_wins():
    class MyLinear(nn.Linear):
        pass

    class QMyLinear(QLinear):
        pass

    net = nn.Sequential(nn.Linear(2, 2), MyLinear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    quantize(net, QuantConfig())
    assert type(net[1]) is QLinear  # subclass of nn.Linear, no entry of its own
    register_quant_module(MyLinear, QMyLinear)
    try:
        net = quantize(nn.Sequential(nn.Linear(2, 2), MyLinear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)), QuantConfig())
        assert type(net[1]) is QMyLinear and type(net[2]) is QLinear
    finally:
        del QUANT_MODULE_MAP[MyLinear]


def test_register_quant_module_teaches_a_new_layer_type():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([0.26, -0.74, 1.6]))

        def forward(self, x):
            return x * self.weight

    class QScale(Scale):
        @classmethod
        def from_float(cls, m, cfg):
            from qdistill.quant import QUANTIZERS

            q = cls()
            q.weight = m.weight
            q.weight_quant = QUANTIZERS.get(cfg.method)(cfg.weight_bits, is_weight=True)
            q.weight_quant.initialize(m.weight.detach())
            q.weight_quant.step.data.fill_(0.5)  # LSQ 3-bit signed: (-4..3) * 0.5
            return q

        def forward(self, x):
            return x * self.weight_quant(self.weight)

    with pytest.raises(TypeError, match="from_float"):
        register_quant_module(Scale, nn.Linear)
    register_quant_module(Scale, QScale)
    try:
        net = quantize(
            nn.Sequential(Scale()), QuantConfig(method="lsq", weight_bits=3, keep_first=False, keep_last=False)
        )
        assert isinstance(net[0], QScale)
        assert torch.equal(net(torch.ones(3)), torch.tensor([0.5, -0.5, 1.5]))
    finally:
        del QUANT_MODULE_MAP[Scale]


def test_without_hints_execution_order_on_the_calibration_batch_decides_first_and_last():
    class Shuffled(nn.Module):
        """Registered a, b, c, d; called c, a, d, b."""

        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Linear(4, 4) for _ in range(4))

        def forward(self, x):
            return self.b(self.d(self.a(self.c(x))))

    net = quantize(Shuffled(), QuantConfig(method="lsq"), calib_data=torch.randn(2, 4))
    assert [type(getattr(net, n)) is nn.Linear for n in "abcd"] == [False, True, True, False]
    net = quantize(Shuffled(), QuantConfig(method="lsq"))  # no batch: registration order
    assert [type(getattr(net, n)) is nn.Linear for n in "abcd"] == [True, False, False, True]


def test_conv1d_is_quantized():
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    quantize(net, QuantConfig(method="lsq"), calib_data=torch.randn(2, 2, 8))
    assert isinstance(net[2], QConv1d) and type(net[0]) is nn.Conv1d and net[2].act_quant.initialized


def test_embedding_table_lands_on_the_weight_grid():
    emb = nn.Embedding(3, 2)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[0.1, 0.2], [-3.0, 1.0], [0.7, 0.9]]))
    q = quantize(
        nn.Sequential(emb),
        QuantConfig(method="lsq", weight_bits=3, keep_first=False, keep_last=False, quantize_embeddings=True),
    )[0]
    assert isinstance(q, QEmbedding) and q.act_quant is None
    q.weight_quant.step.data.fill_(0.5)  # (-4..3) * 0.5
    assert torch.equal(q(torch.tensor([2, 1, 0])), torch.tensor([[0.5, 1.0], [-2.0, 1.0], [0.0, 0.0]]))


def test_nothing_quantized_is_a_config_error_naming_why():
    with pytest.raises(ConfigError, match="no layer of a quantizable type"):
        quantize(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), QuantConfig())
    with pytest.raises(ConfigError, match=r"output head \(quant.keep_last\)"):
        quantize(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), QuantConfig())
    every = QuantConfig(keep_first=False, keep_last=False)
    net = quantize(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), every)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize(net, every)


def test_summary_is_a_short_table():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 4), nn.Linear(4, 2)
    )
    quantize(net, QuantConfig(method="lsq", weight_bits=4, act_bits=8, overrides={"4": {"act_bits": None}}))
    assert str(net.qdistill_summary) == (
        "quantized 2 layers, kept 2 in float\n"
        "     1 x Conv2d W4A8\n"
        "     1 x Linear W4Afp\n"
        "  float  0 (Conv2d): input layer (quant.keep_first)\n"
        "  float  5 (Linear): output head (quant.keep_last)"
    )


def test_calibrate_accepts_a_forward_loop():
    net = quantize(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)), QuantConfig(method="lsq"))
    seen = []

    def forward_loop(model):
        for scale in (1.0, 100.0):
            seen.append(scale)
            model(scale * torch.randn(8, 3))

    calibrate(net, forward_loop)
    assert seen == [1.0, 100.0]
    first_only = net[1].act_quant.step.clone()  # ranges come from the first batch the quantizer sees
    calibrate(net, lambda m: m(torch.randn(8, 3)))
    assert net[1].act_quant.initialized and first_only.item() < 10


def test_import_qdistill_does_not_import_transformers():
    code = "import sys, qdistill; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_timm_pretrained_cfg_names_the_ends():
    class TimmLike(nn.Module):
        """Registered head first: registration order alone would keep the wrong layers."""

        def __init__(self):
            super().__init__()
            self.pretrained_cfg = {"first_conv": "stem.conv", "classifier": ("head.fc", "head_dist")}
            self.head = nn.Module()
            self.head.fc = nn.Linear(4, 2)
            self.head_dist = nn.Linear(4, 2)
            self.body = nn.Conv2d(4, 4, 1)
            self.stem = nn.Module()
            self.stem.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            f = self.body(self.stem.conv(x)).mean((2, 3))
            return self.head.fc(f) + self.head_dist(f)

    net = quantize(TimmLike(), QuantConfig(method="lsq"))
    assert type(net.stem.conv) is nn.Conv2d and type(net.head.fc) is nn.Linear and type(net.head_dist) is nn.Linear
    assert [name for name, _, _ in net.qdistill_summary.quantized] == ["body"]
