import pytest
import torch

from qdistill.quant.fake_quant import fake_quant, use_compiled_kernels


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["ste", "ewgs"])
def test_compiled_kernels_match_eager(backward):
    """The torch.compile path computes the same values and gradients (compiles for ~1 min on CPU)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    args = [torch.tensor(-0.5), torch.tensor(1.2), torch.tensor(0.1)]

    def run():
        xs = x.clone().requires_grad_()
        ps = [a.clone().requires_grad_() for a in args]
        y = fake_quant(xs, ps[0], ps[1], ps[2], 5.0, 16, backward, 0.1)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        return [y.detach(), xs.grad, *[p.grad for p in ps]]

    eager = run()
    use_compiled_kernels(True)
    try:
        compiled = run()
    finally:
        use_compiled_kernels(False)
    for a, b in zip(eager, compiled):
        assert torch.allclose(a, b, atol=1e-5)
