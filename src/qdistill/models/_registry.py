"""The model registry: per-family files add entry points with ``@register_model``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from qdistill.registry import Registry

__all__ = ["MODELS", "ModelFactory", "list_models", "register_model"]

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register a model entry point under its function name (timm style).

    The entry point must accept ``num_classes`` and ``in_channels`` keyword arguments.

    Example:
        >>> @register_model  # doctest: +SKIP
        ... def resnet20(**kwargs):
        ...     return ResNetCifar(depth=20, **kwargs)
    """
    return MODELS.register()(fn)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return MODELS.names()
