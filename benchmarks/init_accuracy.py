"""Step-0 accuracy: top-1 of each EWGS student right after quantization and calibration, before any
training, on the teachers of `fmnist_table.py` and `cifar_table.py` (run those first). It shows how
much a run has to recover at each bit width.

    python benchmarks/init_accuracy.py           # writes benchmarks/results/init_accuracy.json
"""

from __future__ import annotations

import argparse

import torch
from _common import FMNIST_MODEL, FMNIST_ROOT, FMNIST_TEACHER, ResultLog, hardware

from qdistill import BatchLoader, QuantConfig, create_model, evaluate, make_student
from qdistill.experiment import DataConfig, prepare_data

SETUPS = {
    "fmnist": (FMNIST_MODEL, DataConfig(format="idx", root=FMNIST_ROOT, subset=3000), FMNIST_TEACHER),
    "cifar": (
        "resnet20",
        DataConfig(
            format="imagefolder",
            root="../shared/data/cifar10-jpeg.tar.gz",
            subset=4000,
            mean=[0.485, 0.456, 0.406],
            std=[0.229, 0.224, 0.225],
        ),
        "runs/bench/cifar/teacher",
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-images", type=int, default=500)
    args = p.parse_args()
    torch.set_num_threads(1)
    log = ResultLog(
        "init_accuracy", {"test_images": args.test_images, "calibration": "256 training images", "hardware": hardware()}
    )
    for name, (model, data, weights) in SETUPS.items():
        splits, train, _, test = prepare_data(DataConfig(**{**data.__dict__, "test_subset": args.test_images}))
        teacher = create_model(model, num_classes=10, in_channels=train.images.shape[-1], pretrained=weights).eval()
        calib = next(
            iter(BatchLoader(train.without_labels(), 256, mean=splits.mean, std=splits.std, with_labels=False))
        )
        loader = BatchLoader(test, 500, mean=splits.mean, std=splits.std)
        for bits in (1, 2, 4):
            student = make_student(teacher, QuantConfig(method="ewgs", weight_bits=bits, act_bits=bits), calib)
            metrics = evaluate(student, loader, teacher)
            log.add(
                {
                    "key": f"{name}-w{bits}a{bits}",
                    "setup": name,
                    "bits": bits,
                    "test_top1": metrics["top1"],
                    "test_agreement": metrics["agreement"],
                }
            )
            print(name, bits, metrics, flush=True)


if __name__ == "__main__":
    main()
