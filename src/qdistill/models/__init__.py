"""Model zoo: CIFAR, 64x64 and tiny-image classifiers behind one registry.

Build with ``create_model("resnet20", num_classes=10, pretrained="teacher.th")``. Every model
names its first conv and its classifier in the class attributes ``first_conv`` and
``classifier`` (paths as in ``named_modules``) so quantizers can keep them at full precision,
uses a separate ``nn.ReLU`` module per activation, places each BatchNorm right after its conv,
and returns logits only. ``input_size`` gives the image side it was designed for.
"""

from __future__ import annotations

# Importing the family modules registers their entry points.
from . import alexnet_cifar, mobilenetv2, resnet64, resnet_cifar, shufflenetv2, small_cnn, squeezenet, vgg_cifar
from ._factory import create_model, load_state_dict_file
from ._registry import MODELS, list_models, register_model

__all__ = [
    "MODELS",
    "alexnet_cifar",
    "create_model",
    "list_models",
    "load_state_dict_file",
    "mobilenetv2",
    "register_model",
    "resnet64",
    "resnet_cifar",
    "shufflenetv2",
    "small_cnn",
    "squeezenet",
    "vgg_cifar",
]
