"""Loading state-dict files: wrapper prefixes, container layouts and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qdistill.errors import CheckpointError, MissingFileError
from qdistill.models import create_model, load_state_dict_file


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["state_dict", "model", "bare"])
def test_module_prefixed_checkpoint_round_trips(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(0)
    src = create_model("resnet20")
    with torch.no_grad():  # non-default BN statistics so buffers are checked too
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    state = {f"module.{k}": v for k, v in src.state_dict().items() if "num_batches_tracked" not in k}
    obj = state if layout == "bare" else {layout: state, "best_prec1": 90.0}
    path = tmp_path / "ckpt.th"
    torch.save(obj, path)
    torch.manual_seed(1)
    dst = create_model("resnet20", pretrained=str(path))
    assert _same_weights(src, dst)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_safetensors_and_compiled_prefix(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = create_model("smallcnn", in_channels=1)
    path = tmp_path / "w.safetensors"
    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in src.state_dict().items()}, str(path))
    result = load_state_dict_file(dst := create_model("smallcnn", in_channels=1), path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert _same_weights(src, dst)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.th"
    with pytest.raises(MissingFileError, match="nope.th"):
        create_model("resnet20", pretrained=path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.th"
    path.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*corrupt\.th") as info:
        create_model("resnet20", pretrained=path)
    assert "\n" not in str(info.value)


def test_file_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.th"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        create_model("resnet20", pretrained=path)


def test_wrong_num_classes(tmp_path: Path) -> None:
    path = tmp_path / "c100.th"
    torch.save({"state_dict": create_model("resnet20", num_classes=100).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint has 100 classes and the model 10") as info:
        create_model("resnet20", num_classes=10, pretrained=path)
    assert "\n" not in str(info.value)


def test_key_and_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "r32.th"
    torch.save(create_model("resnet32").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(72\): layer1\.3\.conv1\.weight") as info:
        create_model("resnet20", pretrained=path)
    assert "\n" not in str(info.value)

    state = create_model("resnet20").state_dict()
    del state["bn1.bias"]
    state["conv1.weight"] = torch.zeros(16, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): bn1\.bias.*shape mismatch \(1\): conv1\.weight"):
        create_model("resnet20", pretrained=path)


def test_run_folder_means_its_model_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src = create_model("smallcnn", in_channels=1)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))
    load_state_dict_file(dst := create_model("smallcnn", in_channels=1), tmp_path)
    assert _same_weights(src, dst)


def test_run_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="without model.safetensors or model.pt"):
        create_model("smallcnn", pretrained=tmp_path)
