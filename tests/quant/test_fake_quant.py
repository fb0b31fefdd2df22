import pytest
import torch

from qdistill.quant.fake_quant import fake_quant


def _ref(x, lo, hi, step, zero, levels):
    """Unfused reference: the same composition written with autograd ops and a straight-through round."""
    n = levels - 1
    x_c = ((x - lo) / (hi - lo)).clamp(0, 1)
    x_q = x_c + (torch.round(x_c.detach() * n) / n - x_c).detach()
    return (x_q * n - zero) * step


@pytest.mark.parametrize("levels", [2, 4, 16, 256])
def test_levels_are_exact(levels):
    x = torch.linspace(-0.5, 1.5, 1001)
    z, o = torch.tensor(0.0), torch.tensor(1.0)
    y = fake_quant(x, z, o, o / (levels - 1), 0.0, levels)
    expected = torch.arange(levels).float() * (o / (levels - 1))  # integer levels times the step
    assert torch.equal(torch.unique(y), expected)


def test_matches_unfused_reference_ste_all_grads():
    torch.manual_seed(0)
    x = torch.randn(64, requires_grad=True)
    lo = torch.tensor(-0.8, requires_grad=True)
    hi = torch.tensor(1.1, requires_grad=True)
    step = torch.tensor(0.3, requires_grad=True)
    g = torch.randn(64)
    y = fake_quant(x, lo, hi, step, 2.0, 8)
    grads = torch.autograd.grad(y, (x, lo, hi, step), g)
    xs = [t.detach().clone().requires_grad_() for t in (x, lo, hi, step)]
    y_ref = _ref(*xs, 2.0, 8)
    ref_grads = torch.autograd.grad(y_ref, xs, g)
    assert torch.allclose(y, y_ref)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_ewgs_backward_formula():
    x = torch.tensor([0.1, 0.2, 0.45, 0.8, 0.95], requires_grad=True)
    z, o = torch.tensor(0.0), torch.tensor(1.0)
    g = torch.tensor([1.0, -2.0, 0.5, -0.3, 3.0])
    delta = 0.2
    (gx,) = torch.autograd.grad(fake_quant(x, z, o, o / 3, 0.0, 4, "ewgs", delta), x, g)
    x_q = torch.round(x.detach() * 3) / 3
    expected = g * (1 + delta * torch.sign(g) * (x.detach() - x_q))
    assert torch.allclose(gx, expected)


def test_generic_backward_formula():
    x = torch.tensor([0.1, 0.2, 0.45, 0.8, 0.95], requires_grad=True)
    z, o = torch.tensor(0.0), torch.tensor(1.0)
    g = torch.tensor([1.0, -2.0, 0.5, -0.3, 3.0])
    mu = 0.7
    (gx,) = torch.autograd.grad(fake_quant(x, z, o, o / 3, 0.0, 4, "generic", mu), x, g)
    x_q = torch.round(x.detach() * 3) / 3
    assert torch.allclose(gx, g + mu * (x.detach() - x_q))


def test_clipped_elements_get_no_input_gradient():
    x = torch.tensor([-1.0, 0.5, 2.0], requires_grad=True)
    z, o = torch.tensor(0.0), torch.tensor(1.0)
    (gx,) = torch.autograd.grad(fake_quant(x, z, o, o / 3, 0.0, 4, "ewgs", 0.5), x, torch.ones(3))
    assert gx[0] == 0 and gx[2] == 0 and gx[1] != 0


def test_clipped_range_rule_learns_only_from_clipped_elements():
    x = torch.tensor([0.2, 0.5, 3.0, 4.0])
    alpha = torch.tensor(1.0, requires_grad=True)
    zero = torch.tensor(0.0)
    y = fake_quant(x, zero, alpha, alpha / 3, 0.0, 4, range_rule="clipped")
    (ga,) = torch.autograd.grad(y, alpha, torch.tensor([5.0, 7.0, 1.0, 2.0]))
    assert ga.item() == pytest.approx(3.0)  # only the two clipped elements, dy/dalpha = 1


def test_lsq_grid_has_an_exact_zero():
    step = torch.tensor(0.1)
    y = fake_quant(torch.tensor([-0.01, 0.0, 0.02]), -2 * step, step, step, 2.0, 4)
    assert torch.equal(y, torch.zeros(3))


def test_per_channel_broadcast_and_reduction():
    w = torch.randn(3, 2, 2, 2, requires_grad=True)
    hi = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1).requires_grad_()
    lo = -hi.detach()
    y = fake_quant(w, lo, hi, hi * 2 / 3, 1.5, 4)
    y.sum().backward()
    assert hi.grad.shape == (3, 1, 1, 1)
    for c in range(3):
        levels = torch.unique(y[c].detach())
        assert all(any(torch.isclose(v, hi[c, 0, 0, 0] * k) for k in (-1, -1 / 3, 1 / 3, 1)) for v in levels)


def test_bad_arguments():
    z, o = torch.tensor(0.0), torch.tensor(1.0)
    with pytest.raises(ValueError, match="levels"):
        fake_quant(torch.zeros(2), z, o, o, 0.0, 1)
    with pytest.raises(ValueError, match="backward"):
        fake_quant(torch.zeros(2), z, o, o, 0.0, 4, backward="nope")
