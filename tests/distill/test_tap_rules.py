import torch
from torch import nn

from qdistill import create_model
from qdistill.distill.tap_rules import default_taps, last_quantized_conv, probe_shapes

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
