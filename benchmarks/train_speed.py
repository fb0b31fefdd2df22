"""Training speed: throughput (img/s) and peak memory of one SQAKD step at W1/W2/W4/W8 (EWGS) against
the full-precision KD step, for ResNet-20 at 32x32 and ResNet-18 at 64x64, in one invocation.

A step is teacher forward (no grad) + student forward + KL + backward + Adam step, on random
images (speed does not depend on the data). Each configuration runs in a fresh subprocess so peak
memory is its own: on CPU it is the growth of peak RSS (``ru_maxrss``) over the RSS once the models
are built, before the first step (activations, gradients, optimizer state); on CUDA it is
``torch.cuda.max_memory_allocated`` (models included).

    python benchmarks/train_speed.py             # writes benchmarks/results/train_speed_cpu.json
    python benchmarks/train_speed.py --device cuda   # train_speed_gpu.json, when a GPU is there
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time

import torch
from _common import ResultLog, hardware

from qdistill import QuantConfig, create_model, kd_loss, make_student

MODELS = {"resnet20": 32, "resnet18": 64}
BITS = (None, 1, 2, 4, 8)  # None: the FP KD step


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def measure(model_name: str, bits: int | None, batch: int, steps: int, device: str) -> dict[str, float]:
    """Throughput and peak memory of ``steps`` timed training steps (after one warm-up step)."""
    size = MODELS[model_name]
    torch.manual_seed(0)
    teacher = create_model(model_name, num_classes=10, in_channels=3).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    if bits is None:
        student = copy.deepcopy(teacher).train()
    else:
        # calibrate on 4 images: a big calibration forward would raise the RSS high-water mark before we measure
        student = make_student(teacher, QuantConfig(method="ewgs", weight_bits=bits, act_bits=bits), x[:4]).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)

    def step() -> None:
        with torch.no_grad():
            t = teacher(x)
        loss = kd_loss(student(x), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = _rss_kib()  # models built, nothing trained yet
    step()  # warm-up (allocates optimizer state); counted in the peak, not in the timing
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"img_per_s": batch * steps / seconds, "peak_mib": peak_mib, "step_ms": 1000 * seconds / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs=2, default=[64, 8], help="batch of resnet20 and resnet18")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # internal: MODEL BITS in this process
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batches = dict(zip(MODELS, args.batch))
    if args.one:
        name, bits = args.one[0], None if args.one[1] == "fp" else int(args.one[1])
        print(json.dumps(measure(name, bits, batches[name], args.steps, args.device)))
        return
    tag = "gpu" if args.device == "cuda" else "cpu"
    log = ResultLog(
        f"train_speed_{tag}",
        {
            "hardware": hardware(),
            "steps": args.steps,
            "batch": batches,
            "memory": "CUDA max_memory_allocated"
            if tag == "gpu"
            else "growth of peak RSS (ru_maxrss) over RSS before the first step, per subprocess",
        },
    )
    log.save()
    for name in MODELS:
        for bits in BITS:
            label = "fp" if bits is None else str(bits)
            key = f"{name}-{label}"
            if log.has(key):
                continue
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                label,
                "--device",
                args.device,
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
                "--batch",
                *map(str, args.batch),
            ]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            log.add({"key": key, "model": name, "bits": bits, "batch": batches[name], **res})
            print(key, {k: round(v, 1) for k, v in res.items()}, flush=True)
    for name in MODELS:
        fp = log.get(f"{name}-fp")
        for bits in BITS[1:]:
            r = log.get(f"{name}-{bits}")
            print(f"{name} W{bits}A{bits}: {r['img_per_s'] / fp['img_per_s']:.2f}x FP KD throughput")


if __name__ == "__main__":
    main()
