"""Every registered model builds, runs forward/backward and exposes the names quantizers rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qdistill.errors import ConfigError
from qdistill.models import create_model, list_models, register_model
from qdistill.models.resnet_cifar import ResNetCifar

EXPECTED = {
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg8",
    "vgg11",
    "vgg13",
    "alexnet",
    "resnet18",
    "vgg11_64",
    "mobilenetv2",
    "shufflenetv2",
    "squeezenet",
    "smallcnn",
    "smallcnn28",
}
NATURAL_SIZE = {"resnet18": 64, "vgg11_64": 64, "mobilenetv2": 64, "shufflenetv2": 64, "squeezenet": 64}


def natural_size(name: str) -> int:
    return NATURAL_SIZE.get(name, 28 if name.startswith("smallcnn") else 32)


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def test_registry_holds_exactly_the_documented_models() -> None:
    assert set(list_models()) == EXPECTED
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward_and_metadata(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    size = natural_size(name)
    assert model.input_size == size
    modules = dict(model.named_modules())
    assert isinstance(modules[model.first_conv], nn.Conv2d)
    assert modules[model.first_conv] is next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(modules[model.classifier], nn.Linear)
    assert modules[model.classifier].out_features == 7

    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 7)
    out.square().mean().backward()
    first = modules[model.first_conv].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_each_relu_is_a_distinct_module_called_once(name: str) -> None:
    model = create_model(name).eval()
    all_named = list(model.named_modules(remove_duplicate=False))
    assert len(all_named) == len({id(m) for _, m in all_named}), "a module is reused under two names"
    assert not any(isinstance(m, (nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU)) for _, m in all_named)
    calls: dict[str, int] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.ReLU):
            mod.register_forward_hook(lambda *_, key=mod_name: calls.__setitem__(key, calls.get(key, 0) + 1))
    size = natural_size(name)
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    assert calls and set(calls.values()) == {1}
    assert len(calls) == sum(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_every_conv_is_followed_by_its_batchnorm(name: str) -> None:
    ordered = leaves(create_model(name))
    for i, (conv_name, conv) in enumerate(ordered):
        if isinstance(conv, nn.Conv2d):
            bn_name, bn = ordered[i + 1]
            assert isinstance(bn, nn.BatchNorm2d), f"{conv_name} is followed by {bn_name}"
            assert bn.num_features == conv.out_channels
            assert conv.bias is None


@pytest.mark.parametrize(
    ("name", "size", "channels"), [("smallcnn", 8, 1), ("smallcnn", 28, 1), ("smallcnn", 28, 3), ("smallcnn28", 28, 1)]
)
def test_smallcnn_sizes(name: str, size: int, channels: int) -> None:
    model = create_model(name, num_classes=10, in_channels=channels)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet20", "vgg8", "resnet18", "mobilenetv2", "squeezenet"])
def test_in_channels(name: str) -> None:
    model = create_model(name, num_classes=3, in_channels=1)
    size = natural_size(name)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 3)


def test_resnet_cifar_layout_and_option_a_shortcut() -> None:
    model = create_model("resnet20")
    keys = list(model.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert keys[-2:] == ["linear.weight", "linear.bias"]
    assert "layer3.2.conv2.weight" in keys and "layer3.3.conv1.weight" not in keys
    assert not any("shortcut" in k or "downsample" in k for k in keys)  # option A has no parameters
    assert sum(p.numel() for p in model.parameters()) == 269_722  # 0.27M, as the reference checkpoint
    x = torch.arange(2 * 16 * 4 * 4, dtype=torch.float32).view(2, 16, 4, 4)
    y = model.layer2[0].downsample(x)
    assert y.shape == (2, 32, 2, 2)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    assert sum(isinstance(m, nn.Conv2d) for m in create_model("resnet110").modules()) == 109


def test_resnet18_matches_torchvision_layout() -> None:
    keys = set(create_model("resnet18", num_classes=200).state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "layer4.1.conv2.weight",
        "fc.weight",
        "fc.bias",
    ):
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in keys


def test_vgg8_has_six_convs_and_two_linears() -> None:
    model = create_model("vgg8")
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 2


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet1000'.*resnet20.*vgg8"):
        create_model("resnet1000")


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(ConfigError, match="path"):
        create_model("resnet20", pretrained=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"6n\+2"):
        ResNetCifar(depth=21)


def test_register_model_rejects_duplicates() -> None:
    def resnet20(**kwargs: object) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(resnet20)
    assert set(list_models()) == EXPECTED


def test_same_seed_same_weights() -> None:
    torch.manual_seed(1)
    a = create_model("shufflenetv2").state_dict()
    torch.manual_seed(1)
    b = create_model("shufflenetv2").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
