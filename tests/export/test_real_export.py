"""Real CIFAR-10 JPEG test images and the pretrained ResNet-20: parity of W8A8/W4A4 exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CIFAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
TEACHER = SHARED / "teachers" / "resnet20-12fca82f.th"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CIFAR.is_file() and TEACHER.is_file()), reason=f"CIFAR-10 JPEG and teacher not found in {SHARED}"
    ),
]


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    import qdistill

    splits = qdistill.load_dataset("imagefolder", CIFAR, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    batch = next(
        iter(qdistill.BatchLoader(splits.test, 2000, mean=splits.mean, std=splits.std, shuffle=True, with_labels=False))
    )
    return batch[0] if isinstance(batch, (list, tuple)) else batch


@pytest.mark.parametrize("bits", [8, 4])
def test_resnet20_export_parity(bits, test_images, tmp_path):
    """Calibrated LSQ students on CIFAR-10 test images (residual kept float). As calibrated, the
    runtime's int32 bias rounding costs agreement (the gate reports it against the model as it is:
    at W4A4 about 96% of the images agree); once the biases sit on the int32 grid (`snap_biases`)
    the export meets the issue's 99.9% on every image."""
    import qdistill
    from qdistill import QuantConfig
    from qdistill.export import export_onnx, snap_biases

    teacher = qdistill.create_model("resnet20", pretrained=TEACHER).eval()
    student = qdistill.make_student(
        teacher, QuantConfig(method="lsq", weight_bits=bits, act_bits=bits), test_images[:256]
    )
    as_calibrated = export_onnx(student, test_images[:8], tmp_path / "m.onnx", calib=test_images, min_agreement=90.0)
    assert as_calibrated["parity"]["images"] == 2000
    snap_biases(student, test_images[:8])
    snapped = export_onnx(student, test_images[:8], tmp_path / "s.onnx", calib=test_images, min_agreement=99.9)[
        "parity"
    ]
    print(bits, as_calibrated["parity"], snapped)
    assert snapped["top1_agreement"] >= 99.9
