"""Command line: ``qdistill run | train | eval``. Every command is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@command
def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from qdistill.demo import format_table, run_demo

    torch.set_num_threads(args.threads)  # the digits models are tiny: more threads mostly add sync overhead
    params = _parse_params(args.param)
    summary = run_demo(
        args.out,
        method=args.method,
        quantizer=args.quantizer,
        bits=args.bits,
        epochs=args.epochs,
        seed=args.seed,
        method_params=params,
        progress=args.progress,
        overwrite=args.overwrite,
    )
    print(format_table(summary))
    print(f"results written to {args.out}/results.json")
    return 0


@command
def cmd_train(args: argparse.Namespace) -> int:
    import os

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:  # re-run this command in N processes of one group
        from qdistill.train.distributed import launch

        return launch(["-m", "qdistill", *_without_nproc(args.argv)], args.nproc)
    from qdistill.experiment import load_config, run_experiment
    from qdistill.train.distributed import is_main

    cfg = load_config(args.config, args.set)
    if args.out:
        from dataclasses import replace

        cfg = replace(cfg, out=args.out)
    results = run_experiment(cfg, resume=args.resume, overwrite=args.overwrite, log=print)
    if is_main():
        print(json.dumps(results, indent=1))
    return 0


def _without_nproc(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if not skip and not a.startswith("--nproc"):
            out.append(a)
        skip = a == "--nproc"
    return out


@command
def cmd_eval(args: argparse.Namespace) -> int:
    from qdistill.data import BatchLoader
    from qdistill.experiment import load_run, prepare_data
    from qdistill.train.evaluate import evaluate

    model, cfg, _ = load_run(args.run_dir, args.which)
    if cfg.model.source == "hf":
        from qdistill.hf_experiment import evaluate_hf_run

        print(json.dumps(evaluate_hf_run(args.run_dir, args.which), indent=1))
        return 0
    splits, _, _, test = prepare_data(cfg.data)
    if test is None:
        from qdistill.errors import DataError

        raise DataError(f"{cfg.data.format} data at {cfg.data.root} has no test split to evaluate on")
    loader = BatchLoader(test, cfg.data.eval_batch_size, mean=splits.mean, std=splits.std)
    teacher = None
    if cfg.model.pretrained:
        from qdistill.models import create_model

        teacher = create_model(
            cfg.model.name,
            num_classes=cfg.model.num_classes or splits.num_classes,
            in_channels=splits.train.images.shape[-1],
            pretrained=cfg.model.pretrained,
        ).eval()
    print(json.dumps(evaluate(model, loader, teacher), indent=1))
    return 0


@command
def cmd_export(args: argparse.Namespace) -> int:
    from qdistill.export.run import export_run

    report = export_run(
        args.run_dir, args.format, args.out, args.min_agreement, args.residual, args.images, args.threads
    )
    p = report["parity"]
    decisive = p.get("top1_agreement_decisive")
    gate = f", {decisive:.2f}% on the {p['decisive_images']} decisive ones" if decisive is not None else ""
    print(
        f"{report['format']}: {report['file_bytes'] / 1024:.1f} KiB, top-1 agreement {p['top1_agreement']:.2f}% "
        f"on {p['images']} {p.get('unit', 'images')}{gate}, max |logit diff| {p['max_abs_logit_diff']:.4g}"
    )
    return 0


@command
def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qdistill.errors import ConfigError, MissingFileError
    from qdistill.export.bench import compare, print_rows

    if not args.artefact.endswith(".onnx"):
        raise ConfigError(
            f"{args.artefact}: bench takes an .onnx file written by qdistill export (qdistill export RUN_DIR)"
        )
    fp32 = (
        args.fp32 or args.artefact.removesuffix(".ort.onnx") + ".fp32.onnx"
    )  # model.onnx[.ort.onnx] -> model.onnx.fp32.onnx
    for path in (args.artefact, fp32):
        if not Path(path).is_file():
            raise MissingFileError(f"{path} not found")
    shape = None if args.shape is None else _parse_shape(args.shape)
    rows = compare(fp32, args.artefact, shape, threads=args.threads, seconds=args.seconds)
    print_rows(rows, args.artefact)
    return 0


def _parse_shape(text: str) -> tuple[int, ...]:
    from qdistill.errors import ConfigError

    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--shape {text!r}: expected C,H,W as three positive integers, e.g. 3,32,32")
    return shape


def _parse_params(items: Sequence[str]) -> dict:
    from qdistill.config import apply_overrides

    return apply_overrides({}, list(items))


def build_parser() -> argparse.ArgumentParser:
    from qdistill.distill import OBJECTIVES
    from qdistill.quant import QUANTIZERS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    p = argparse.ArgumentParser(prog="qdistill", description="Label-free low-bit quantization by self-distillation.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    r = add("run", "the main job on the bundled digits data: teacher, label-free student, baseline")
    r.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    r.add_argument("--overwrite", action="store_true", help="replace runs of other settings in OUT")
    r.add_argument(
        "--method",
        default="sqakd",
        choices=OBJECTIVES.names(),
        metavar="METHOD",
        help=f"student method (default: sqakd): {', '.join(OBJECTIVES.names())}; see docs/methods.md",
    )
    r.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter, repeatable")
    r.add_argument("--quantizer", default="ewgs", choices=QUANTIZERS.names(), help="quantizer (default: ewgs)")
    r.add_argument("--bits", type=int, default=2, help="weight and activation bits (default: 2)")
    r.add_argument("--epochs", type=int, default=30, help="epochs per model (default: 30)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    r.add_argument("--progress", action="store_true", help="show progress bars")

    t = add("train", "train from a YAML config")
    t.add_argument("config", help="YAML file (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.epochs=5")
    t.add_argument("--out", help="output folder (overrides the config's out)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same config; epochs may grow)")
    t.add_argument("--overwrite", action="store_true", help="replace a run of another config in OUT")
    t.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="data parallel training in N processes on this machine (as torchrun --nproc-per-node N); "
        "data.batch_size stays the global batch",
    )

    e = add("eval", "evaluate a trained run on its test split")
    e.add_argument("run_dir")
    e.add_argument("--which", default="best", choices=["best", "last"])

    x = add(
        "export",
        "export a trained run as QDQ ONNX or bit-packed safetensors (HF runs: text classifiers onnx, causal LMs packed), with a parity check",
    )
    x.add_argument("run_dir")
    x.add_argument("--format", default="onnx", choices=["onnx", "packed"])
    x.add_argument(
        "--out",
        help="output file (default: RUN_DIR/model.onnx or RUN_DIR/model.packed.safetensors; the run keeps its own model.safetensors)",
    )
    x.add_argument(
        "--min-agreement", type=float, default=99.5, help="refuse below this top-1 agreement in %% (default 99.5)"
    )
    x.add_argument(
        "--residual",
        default="float",
        choices=["float", "int8"],
        help="ONNX only: keep float residual sums float (default, exact) or quantize them to uint8 after "
        "training (fast, adds rounding; train with quant.residual_bits instead)",
    )
    x.add_argument(
        "--images",
        type=int,
        default=1000,
        help="parity/calibration images from the run's data (default 1000; a Hugging Face run: held-out tokens)",
    )
    x.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")

    bn = add("bench", "latency and throughput of an exported ONNX model vs its FP32 twin")
    bn.add_argument("artefact", help="quantized .onnx written by qdistill export")
    bn.add_argument("--fp32", help="FP32 .onnx to compare with (default: model.onnx.fp32.onnx beside the artefact)")
    bn.add_argument("--shape", help="one input's C,H,W (default: read from the model)")
    bn.add_argument("--threads", type=int, default=2, help="intra-op threads, pinned (default 2)")
    bn.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error (`QdistillError`) is one line and exit code 2, a bug a traceback."""
    from qdistill.errors import QdistillError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    except QdistillError as e:
        if args.debug:
            raise
        print(f"qdistill {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
