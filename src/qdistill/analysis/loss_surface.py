"""Loss surfaces around a model's weights along filter-normalised random directions.

Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018:
each random direction is rescaled filter by filter (per output channel) to the norm of the
weights it perturbs, so surfaces of differently scaled models are comparable. Tensors with one
dimension or none (biases, BatchNorm affine parameters, quantizer ranges) are not perturbed, as in
the paper. The model is evaluated in eval mode (BatchNorm uses its running statistics); its
weights, buffers and train/eval mode are restored exactly afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qdistill.errors import ConfigError, DataError

__all__ = ["LossSurface", "filter_normalized_direction", "loss_surface", "plot_loss_surface"]

LossFn = Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class LossSurface:
    """Losses on a grid: ``losses[i]`` (1D) or ``losses[i, j]`` at ``coords[i] * d1 + coords[j] * d2``.

    Attributes:
        coords: step sizes along each direction, from ``-span`` to ``span``.
        losses: shape ``(steps,)`` or ``(steps, steps)``; the centre is the unperturbed model.
    """

    coords: Tensor
    losses: Tensor

    @property
    def dims(self) -> int:
        return self.losses.dim()

    @property
    def center(self) -> float:
        """Loss of the model itself."""
        mid = len(self.coords) // 2
        return float(self.losses[(mid,) * self.dims])


def filter_normalized_direction(params: Sequence[Tensor], generator: torch.Generator) -> list[Tensor]:
    """A Gaussian direction per parameter, each output filter scaled to that filter's weight norm.

    Parameters with fewer than two dimensions get a zero direction.
    """
    out = []
    for p in params:
        if p.dim() < 2:
            out.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        p_norm = p.detach().flatten(1).norm(dim=1)
        out.append(d * (p_norm / d_norm).view(-1, *([1] * (p.dim() - 1))))
    return out


@torch.no_grad()
def _mean_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> float:
    return sum(float(loss_fn(model, b)) for b in batches) / len(batches)


@torch.no_grad()
def loss_surface(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    steps: int = 21,
    span: float = 1.0,
    dims: int = 2,
    seed: int = 0,
) -> LossSurface:
    """Evaluate ``loss_fn`` on a 1D line or 2D plane of weights around ``model``'s own.

    Args:
        model: any module; perturbed in place during the call and restored exactly afterwards.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, e.g.
            ``lambda m, b: F.cross_entropy(m(b[0]), b[1])`` or a label-free KL to a teacher.
        batches: the data the loss is averaged over (kept in memory; a few batches suffice).
        steps: grid points per direction; an odd number puts the model itself at the centre.
        span: the grid covers ``[-span, span]`` times each filter-normalised direction.
        dims: 1 (a line) or 2 (a plane).
        seed: seed of the random directions (the same seed gives the same directions).

    Returns:
        A `LossSurface` with the grid of mean losses.
    """
    if dims not in (1, 2):
        raise ConfigError(f"loss_surface: dims must be 1 or 2, got {dims}")
    if steps < 2 or span <= 0:
        raise ConfigError(f"loss_surface: steps must be >= 2 and span > 0, got steps={steps}, span={span}")
    batches = list(batches)
    if not batches:
        raise DataError("loss_surface: batches is empty: pass at least one batch")
    params = [p for p in model.parameters()]
    origin = [p.detach().clone() for p in params]
    saved_buffers = {k: v.clone() for k, v in model.named_buffers()}
    gen = torch.Generator().manual_seed(seed)
    directions = [filter_normalized_direction(origin, gen) for _ in range(dims)]
    coords = torch.linspace(-span, span, steps)
    losses = torch.empty((steps,) * dims)
    was_training = model.training
    model.eval()
    try:
        for index in torch.cartesian_prod(*[torch.arange(steps)] * dims).view(-1, dims).tolist():
            for i, p in enumerate(params):
                shift = sum(float(coords[a]) * directions[k][i] for k, a in enumerate(index))
                p.copy_(origin[i] + shift)
            losses[tuple(index)] = _mean_loss(model, loss_fn, batches)
    finally:
        for p, o in zip(params, origin):
            p.copy_(o)
        buffers = dict(model.named_buffers())
        for k, v in saved_buffers.items():
            buffers[k].copy_(v)
        model.train(was_training)
    return LossSurface(coords, losses)


def plot_loss_surface(
    surface: LossSurface, ax: Any = None, kind: str = "contour", title: str | None = None, levels: int = 20
) -> Any:
    """Draw a `LossSurface` with matplotlib (imported here, so ``qdistill`` does not need it).

    Args:
        surface: from `loss_surface`.
        ax: an existing axes (a ``projection="3d"`` one for ``kind="3d"``); None makes a figure.
        kind: ``contour`` or ``3d`` for 2D surfaces; 1D surfaces are always a line.
        title: axes title.
        levels: contour levels.

    Returns:
        The matplotlib axes drawn on.
    """
    import matplotlib.pyplot as plt

    if kind not in ("contour", "3d"):
        raise ConfigError(f"plot_loss_surface: kind must be 'contour' or '3d', got {kind!r}")
    x, z = surface.coords.numpy(), surface.losses.numpy()
    if ax is None:
        fig = plt.figure(figsize=(4.5, 4))
        ax = fig.add_subplot(projection="3d" if kind == "3d" and surface.dims == 2 else None)
    if surface.dims == 1:
        ax.plot(x, z)
        ax.set_xlabel("step along direction")
        ax.set_ylabel("loss")
    elif kind == "3d":
        xx, yy = torch.meshgrid(surface.coords, surface.coords, indexing="ij")
        ax.plot_surface(xx.numpy(), yy.numpy(), z, cmap="viridis", linewidth=0)
        ax.set_zlabel("loss")
    else:
        cs = ax.contour(x, x, z.T, levels=levels, cmap="viridis")
        ax.clabel(cs, fontsize=6)
        ax.plot([0], [0], "r+")
    if title:
        ax.set_title(title)
    return ax
