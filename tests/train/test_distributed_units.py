"""The parts of data parallel training that need no second process: shards, synced BatchNorm, argv."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from qdistill.cli import _without_nproc
from qdistill.data import BatchLoader, ImageSet
from qdistill.errors import ConfigError
from qdistill.train.distributed import SyncBatchNorm, convert_sync_batchnorm


def _loader(data: ImageSet, **kw) -> BatchLoader:
    return BatchLoader(
        data, 8, mean=(0.5,), std=(0.25,), augment="crop_flip", shuffle=True, drop_last=True, seed=1, **kw
    )


@pytest.mark.parametrize("shards", [2, 4])
def test_shards_are_rows_of_the_one_process_batch(shards):
    rng = np.random.default_rng(0)
    data = ImageSet((rng.random((20, 6, 6, 1)) * 255).astype(np.uint8), rng.integers(0, 3, 20))
    whole = _loader(data)
    parts = [_loader(data, num_shards=shards, shard=r) for r in range(shards)]
    assert all(len(p) == len(whole) == 2 for p in parts)  # steps count global batches
    for epoch in (0, 3):
        for p in [whole, *parts]:
            p.set_epoch(epoch)
        for (x, y), *shard_batches in zip(whole, *parts):
            assert all(len(sx) == 8 // shards for sx, _ in shard_batches)
            assert torch.equal(torch.cat([sx for sx, _ in shard_batches]), x)  # same images, same crops and flips
            assert torch.equal(torch.cat([sy for _, sy in shard_batches]), y)


def test_uneven_shards_are_refused():
    data = ImageSet(np.zeros((10, 4, 4, 1), np.uint8), None)
    with pytest.raises(ConfigError, match="does not split evenly over 3"):
        BatchLoader(data, 8, mean=(0.0,), std=(1.0,), num_shards=3, shard=0)
    with pytest.raises(ConfigError, match="short last batch"):
        BatchLoader(data, 4, mean=(0.0,), std=(1.0,), num_shards=2, shard=0)


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_synced_batchnorm_is_batchnorm_of_the_whole_batch(one_process_group, momentum):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=momentum)
    nn.init.uniform_(ref.weight, 0.5, 1.5)
    nn.init.uniform_(ref.bias, -0.5, 0.5)
    bn = SyncBatchNorm(3, momentum=momentum)
    bn.load_state_dict(ref.state_dict())
    for _ in range(2):  # two steps: running statistics accumulate alike
        x = (torch.randn(6, 3, 5, 5) * 3 + 1).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        w = torch.randn(6, 3, 5, 5)
        y_ref = ref(x)
        (y_ref * w).sum().backward()
        y = bn(x2)
        (y * w).sum().backward()
        assert torch.allclose(y, y_ref, atol=1e-5)
        assert torch.allclose(x2.grad, x.grad, atol=1e-5)
        assert torch.allclose(bn.weight.grad, ref.weight.grad, atol=1e-4)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(bn, key).float(), getattr(ref, key).float(), atol=1e-5), key
    bn.eval(), ref.eval()
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(bn(x), ref(x), atol=1e-5)


def test_synced_batchnorm_forward_matches(one_process_group):
    torch.manual_seed(1)
    ref, bn = nn.BatchNorm1d(4), SyncBatchNorm(4)
    x = torch.randn(16, 4) * 2
    assert torch.allclose(bn(x), ref(x), atol=1e-5)  # 2D inputs (SQuaT's linear adaptors)


def test_conversion_keeps_parameters_and_state_dict_keys():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm1d(2)))
    params = {id(p) for p in net.parameters()}
    keys = set(net.state_dict())
    assert convert_sync_batchnorm(net, cuda=False) == 2
    assert isinstance(net[1], SyncBatchNorm) and isinstance(net[2][0], SyncBatchNorm)
    assert {id(p) for p in net.parameters()} == params and set(net.state_dict()) == keys


def test_nproc_is_dropped_from_the_relaunched_command():
    assert _without_nproc(["train", "c.yaml", "--nproc", "2", "--resume"]) == ["train", "c.yaml", "--resume"]
    assert _without_nproc(["train", "--nproc=4", "c.yaml"]) == ["train", "c.yaml"]
