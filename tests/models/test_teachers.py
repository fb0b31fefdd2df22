"""The real CIFAR-10 teachers in ../shared load unchanged and reach their reported accuracy."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qdistill.models import create_model, load_state_dict_file

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TEACHERS = SHARED / "teachers"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
PER_CLASS = 50

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared teachers and data not found at {SHARED}"),
]


def _teacher(arch: str) -> Path:
    found = sorted(TEACHERS.glob(f"{arch}-*.th"))
    if not found:
        pytest.skip(f"no {arch} teacher in {TEACHERS}")
    return found[0]


def _cifar_test_subset(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the first ``per_class`` test JPEGs of each class straight from the archive."""
    from PIL import Image

    images: list[np.ndarray] = []
    labels: list[int] = []
    counts = dict.fromkeys(CLASSES, 0)
    with tarfile.open(CIFAR_JPEG, "r:gz") as tar:
        for member in tar:  # streams; stops once every class has enough
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4 or parts[1] != "test" or parts[2] not in counts:
                continue
            if int(Path(parts[3]).stem) >= per_class:
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(CLASSES.index(parts[2]))
            counts[parts[2]] += 1
            if all(c == per_class for c in counts.values()):
                break
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    return (x - MEAN) / STD, torch.tensor(labels)


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet44", "resnet56"])
def test_teacher_loads_strictly(arch: str) -> None:
    model = create_model(arch)
    result = load_state_dict_file(model, _teacher(arch))
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_resnet20_teacher_accuracy_and_determinism() -> None:
    if not CIFAR_JPEG.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_JPEG}")
    path = _teacher("resnet20")
    x, y = _cifar_test_subset(PER_CLASS)
    assert x.shape == (10 * PER_CLASS, 3, 32, 32) and torch.bincount(y).tolist() == [PER_CLASS] * 10

    model = create_model("resnet20")
    result = load_state_dict_file(model, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    again = create_model("resnet20", pretrained=path)
    model.eval()
    again.eval()
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, again(x))  # atol 0
    accuracy = (logits.argmax(1) == y).float().mean().item()
    print(f"resnet20 teacher top-1 on {len(y)} CIFAR-10 JPEG test images: {accuracy:.4f}")
    assert accuracy >= 0.72, f"top-1 {accuracy:.4f} < 0.72 (reported 0.8103 on the full JPEG test set)"
