import torch
from torch import nn

from qdistill import QuantConfig, create_model
from qdistill.distill.student import make_student
from qdistill.distill.tap_rules import default_taps, last_quantized_conv, probe_shapes, squat_layer

from .helpers import student_of


def test_default_taps_of_registry_models():
    r20 = create_model("resnet20", num_classes=10, in_channels=1)
    assert default_taps(r20, "stages") == ["layer1", "layer2", "layer3"]
    assert default_taps(r20, "hint") == ["layer2"] and default_taps(r20, "last_stage") == ["layer3"]
    assert default_taps(r20, "penultimate") == ["linear:input"]
    assert default_taps(r20, "last_conv") == ["layer3.2.conv2:input"]
    cnn = create_model("smallcnn", num_classes=10, in_channels=1)
    assert default_taps(cnn, "stages") == ["relu2", "relu3"]
    assert default_taps(create_model("smallcnn28", in_channels=1), "stages") == ["relu1", "relu2", "relu3"]


def test_stages_of_a_model_wrapped_in_one_sequential():
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    assert default_taps(net, "stages") == ["0.1", "0.3"]
    assert default_taps(net, "penultimate") == ["3:input"]


def test_probing_leaves_batchnorm_and_uncalibrated_quantizers_alone(teacher, batch):
    student = student_of(teacher, batch[0])
    q = student.conv3.act_quant
    q.reset()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    shapes = probe_shapes(student, ["conv3.act_quant", "fc:input"])
    assert shapes["conv3.act_quant"][1] == 16 and shapes["fc:input"][1] == 16
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert last_quantized_conv(student) == "conv3"


class _Block(nn.Module):
    """timm's ViT block layout: attn.qkv (widens 3x), attn.proj, then mlp.fc1 (widens), mlp.fc2."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = nn.ModuleDict({"qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d)})
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(d, 2 * d), "fc2": nn.Linear(2 * d, d)})

    def forward(self, x):
        q, k, v = self.attn["qkv"](x).chunk(3, -1)
        x = x + self.attn["proj"](torch.softmax(q @ k.transpose(1, 2), -1) @ v)
        return x + self.mlp["fc2"](torch.relu(self.mlp["fc1"](x)))


class _ViT(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.patch_embed, self.blocks, self.head = (
            nn.Conv2d(3, d, 4, 4),
            nn.Sequential(_Block(d), _Block(d)),
            nn.Linear(d, 3),
        )

    def forward(self, x):
        return self.head(self.blocks(self.patch_embed(x).flatten(2).transpose(1, 2)).mean(1))


def test_squat_taps_a_plain_vit_at_the_last_blocks_ffn_input():
    """An encoder outside transformers (no `can_generate`): the last widening layer, SQuaT's DeiT tap."""
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    student = make_student(_ViT(), QuantConfig(method="lsq", weight_bits=2, act_bits=4), images)
    assert squat_layer(student) == "blocks.1.mlp.fc1"
