import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qdistill import QuantConfig, make_student
from qdistill.analysis import filter_normalized_direction, loss_surface, plot_loss_surface
from qdistill.errors import ConfigError, DataError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


@pytest.mark.parametrize("dims", [1, 2])
def test_centre_is_the_models_loss_and_shape(dims: int) -> None:
    model, batches = _model().eval(), _batches()
    with torch.no_grad():
        expected = sum(float(_ce(model, b)) for b in batches) / len(batches)
    s = loss_surface(model, _ce, batches, steps=5, span=0.5, dims=dims)
    assert s.losses.shape == (5,) * dims
    assert s.center == pytest.approx(expected, abs=1e-6)
    assert s.coords[0] == -0.5 and s.coords[-1] == 0.5


def test_weights_buffers_and_mode_restored_exactly() -> None:
    model = _model().train()
    model(torch.randn(16, 1, 6, 6))  # non-trivial BN running stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_surface(model, _ce, _batches(), steps=3, dims=2)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_same_seed_same_surface_and_surface_not_flat() -> None:
    model, batches = _model(), _batches()
    a = loss_surface(model, _ce, batches, steps=3, dims=2, seed=3)
    b = loss_surface(model, _ce, batches, steps=3, dims=2, seed=3)
    assert torch.equal(a.losses, b.losses)
    assert a.losses.std() > 0


def test_filter_normalisation() -> None:
    params = [p.detach() for p in _model().parameters()]
    dirs = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, dirs):
        if p.dim() < 2:
            assert torch.count_nonzero(d) == 0
        else:
            torch.testing.assert_close(d.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1))


def test_quantized_model_and_plot(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    teacher = _model().eval()
    student = make_student(
        teacher, QuantConfig(method="lsq", weight_bits=2, act_bits=2, keep_first=False), _batches()[0][0]
    )
    before = {k: v.clone() for k, v in student.state_dict().items()}
    s = loss_surface(student, _ce, _batches(), steps=3, dims=2)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    for kind in ("contour", "3d"):
        ax = plot_loss_surface(s, kind=kind, title=kind)
        ax.figure.savefig(tmp_path / f"{kind}.png")
    plot_loss_surface(loss_surface(student, _ce, _batches(), steps=3, dims=1)).figure.savefig(tmp_path / "line.png")
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="^loss_surface: dims must be 1 or 2, got 3$"):
        loss_surface(_model(), _ce, _batches(), dims=3)
    with pytest.raises(ConfigError, match="steps=1, span=1.0"):
        loss_surface(_model(), _ce, _batches(), steps=1)
    with pytest.raises(DataError, match="empty"):
        loss_surface(_model(), _ce, [])
    with pytest.raises(ValueError):  # still a ValueError for callers that catch that
        loss_surface(_model(), _ce, [])


def test_unknown_plot_kind_is_a_config_error() -> None:
    pytest.importorskip("matplotlib")
    surface = loss_surface(_model(), _ce, _batches(), steps=3, dims=1)
    with pytest.raises(ConfigError, match="kind must be 'contour' or '3d', got 'bars'"):
        plot_loss_surface(surface, kind="bars")
