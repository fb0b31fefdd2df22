"""A whole run of a Hugging Face language model (``model.source: hf``): the LM side of `run_experiment`.

Unlabelled text -> frozen fp32 teacher -> quantized copy (round-to-nearest, evaluated as the
baseline before any training) -> label-free distillation -> held-out perplexity of teacher, RTN
and student in the same run, so ``recovery = (ppl_RTN - ppl_student) / (ppl_RTN - ppl_teacher)``
compares like with like.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qdistill.batch import call_model, logits_of, to_device
from qdistill.data.cache import cache_file, read_cache, resolve_cache_dir, write_cache
from qdistill.data.generated import GenerationSettings, generate_blocks, start_prompts
from qdistill.data.text import TextBlockLoader, TextSplits, load_text
from qdistill.data.text_classes import TokenBatchLoader
from qdistill.distill.ensemble import TeacherEnsemble
from qdistill.distill.objectives import build_objective
from qdistill.distill.student import make_student
from qdistill.errors import ConfigError, DataError
from qdistill.models.hf import load_hf_model, load_hf_tokenizer, save_hf_config
from qdistill.rundir import save_model
from qdistill.train.blockwise import blockwise_phase
from qdistill.train.lm_eval import block_metrics, lm_metrics
from qdistill.train.trainer import Trainer, pick_device, seed_everything

if TYPE_CHECKING:
    from qdistill.experiment import DataConfig, RunConfig

__all__ = [
    "LMData",
    "classifier_test_lines",
    "evaluate_hf_run",
    "lm_results",
    "load_lm_data",
    "load_text_blocks",
    "run_hf_experiment",
]


def _tokenize(tokenizer: Any) -> Callable[[str], list[int]]:
    """Ids of a text without special tokens (a BOS per verse would be noise inside packed blocks)."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def _cache_key(cfg: DataConfig, tokenizer: Any) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    what = f"{vocab}|{cfg.block_size}|{cfg.test_lines}|{cfg.test_fraction}|{cfg.text_field}"
    return "text-" + hashlib.sha256(what.encode()).hexdigest()[:12]


def load_text_blocks(cfg: DataConfig, tokenizer: Any) -> TextSplits:
    """`load_text` with the teacher's tokenizer; a single file's token arrays are cached (keyed by
    its content, the vocabulary and the split settings) next to the decoded-image cache."""
    if cfg.root is None:
        raise ConfigError("data.root is required for data.format: text (a .txt/.txt.gz/.jsonl file or a folder)")
    test_lines = tuple(cfg.test_lines) if cfg.test_lines is not None else None
    cache_dir = resolve_cache_dir(cfg.cache_dir)
    file = None
    if cache_dir is not None and Path(cfg.root).is_file():
        file = cache_file(cache_dir, _cache_key(cfg, tokenizer), cfg.root)
        cached = read_cache(file)
        if cached is not None:
            test = torch.from_numpy(cached["test"]) if "test" in cached else None
            return TextSplits(torch.from_numpy(cached["train"]), test, cfg.block_size)
    text = load_text(
        cfg.root,
        _tokenize(tokenizer),
        cfg.block_size,
        field=cfg.text_field,
        test_lines=test_lines,
        test_fraction=cfg.test_fraction,
    )
    if file is not None:
        arrays = {"train": text.train.numpy()} | ({"test": text.test.numpy()} if text.test is not None else {})
        write_cache(file, arrays)
    return text


def _split(blocks: torch.Tensor, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(train, validation) blocks: ``subset`` random blocks, then ``val_fraction`` of them held out."""
    order = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(blocks)))
    if cfg.subset is not None:
        order = order[: cfg.subset]
    n_val = round(cfg.val_fraction * len(order))
    if n_val >= len(order):
        raise DataError(f"data.val_fraction {cfg.val_fraction} leaves no training block of {len(order)}")
    train = blocks[order[n_val:].sort().values]
    return train, (blocks[order[:n_val].sort().values] if n_val else None)


def lm_results(student_ppl: float, teacher_ppl: float, rtn_ppl: float | None) -> dict[str, float]:
    """``ppl_ratio`` (student / teacher) and, with an RTN perplexity, ``recovery`` of its degradation."""
    out = {"ppl_ratio": student_ppl / teacher_ppl}
    if rtn_ppl is not None:
        out["rtn_ppl"] = rtn_ppl
        gap = rtn_ppl - teacher_ppl
        out["recovery"] = (rtn_ppl - student_ppl) / gap if gap > 0 else float("nan")
    return out


@dataclass(frozen=True, eq=False)
class LMData:
    """Token blocks of an LM run: training and validation blocks, held-out real text (perplexity), and
    held-out generated sequences (agreement and KL with the teacher); either held-out part may be None."""

    train: torch.Tensor
    val: torch.Tensor | None
    test: torch.Tensor | None
    generated_test: torch.Tensor | None


def _test_blocks(text: TextSplits, cfg: DataConfig) -> torch.Tensor | None:
    if text.test is None:
        return None
    return text.test[: cfg.test_subset] if cfg.test_subset else text.test


def generation_settings(cfg: DataConfig, tokenizer: Any) -> GenerationSettings:
    """The `data.format: generated` keys as `GenerationSettings` (prompts tokenized by the teacher's tokenizer)."""
    return GenerationSettings(
        num_sequences=cfg.num_sequences,
        block_size=cfg.block_size,
        prompts=start_prompts(tokenizer, cfg.gen_prompts),
        seed=cfg.seed,
        random_first_from=len(tokenizer) if cfg.gen_random_first else 0,
        greedy_tokens=cfg.gen_greedy_tokens,
        temperature=cfg.gen_temperature,
        top_k=cfg.gen_top_k,
        batch_size=cfg.gen_batch_size,
    )


def load_lm_data(cfg: RunConfig, teacher: torch.nn.Module, tokenizer: Any, out: Path) -> LMData:
    """Text blocks (``data.format: text``), or sequences sampled from the teacher into ``out/generated``
    (``generated``: made or completed there, the last ``gen_test_sequences`` held out; ``data.root``,
    when given, adds its held-out lines as real text for perplexity)."""
    if cfg.data.format == "text":
        text = load_text_blocks(cfg.data, tokenizer)
        return LMData(*_split(text.train, cfg.data), _test_blocks(text, cfg.data), None)
    settings = generation_settings(cfg.data, tokenizer)
    blocks = generate_blocks(teacher, settings, out / "generated", pick_device(cfg.train.device))
    n_train = len(blocks) - cfg.data.gen_test_sequences
    test = _test_blocks(load_text_blocks(cfg.data, tokenizer), cfg.data) if cfg.data.root is not None else None
    return LMData(*_split(blocks[:n_train], cfg.data), test, blocks[n_train:] if n_train < len(blocks) else None)


def lm_evaluation(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: LMData,
    cfg: RunConfig,
    device: Any = "cpu",
    teacher_on_text: bool = True,
) -> dict[str, Any]:
    """What `data` can measure: ``ppl`` (and with `teacher_on_text` ``teacher_ppl``, ``agreement``, ``kl``)
    on real held-out text; ``gen_agreement`` / ``gen_kl`` against the teacher on held-out generated
    sequences; ``eval_on`` names the held-out sets used."""
    out: dict[str, Any] = {"eval_on": []}
    if data.test is not None:
        text_teacher = teacher if teacher_on_text else None
        out.update(lm_metrics(student, data.test, cfg.eval.context, cfg.eval.stride, text_teacher, device))
        out["eval_on"].append("text")
    if data.generated_test is not None:
        gen = block_metrics(student, teacher, data.generated_test, cfg.data.eval_batch_size, device)
        out.update({f"gen_{k}": v for k, v in gen.items()})
        out["eval_on"].append("generated")
    return out


def _blockwise(
    cfg: RunConfig,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: torch.Tensor,
    out: Path,
    resume: bool,
    device: torch.device,
    log: Callable[[str], None] | None,
) -> list[dict[str, float]] | None:
    """The block-wise phase (``train.blockwise_steps``, ``train.gptq``) on the first ``blockwise_batches``
    training batches; finished blocks are kept in ``out/blockwise`` for a resume (a fresh start removes them)."""
    if not (cfg.train.blockwise_steps or cfg.train.gptq):
        return None
    folder = out / "blockwise"
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    size = cfg.data.batch_size
    batches = [{"input_ids": b.to(device)} for b in train[: cfg.train.blockwise_batches * size].split(size)]
    report = blockwise_phase(student, teacher, batches, cfg.train, folder, device)
    if log is not None:
        log("block-wise MSE: " + ", ".join(f"{r['mse_before']:.3g}->{r['mse_after']:.3g}" for r in report))
    return report


def run_hf_experiment(cfg: RunConfig, out: Path, resume: bool, log: Callable[[str], None] | None) -> dict[str, Any]:
    """The HF branch of `run_experiment` (``out`` already checked writable and cleared)."""
    start = time.perf_counter()
    seed_everything(cfg.train.seed)
    if cfg.data.format not in ("text", "generated"):
        raise ConfigError(f"model.source: hf trains on data.format: text or generated, got {cfg.data.format!r}")
    if cfg.model.task == "sequence_classification":
        if cfg.data.format != "text":
            raise ConfigError("model.task: sequence_classification trains on labelled lines: data.format: text")
        return _run_classifier(cfg, out, resume, log, start)
    teacher, task = load_hf_model(cfg.model.pretrained, cfg.model.task)
    if task != "causal_lm":
        raise ConfigError(f"model.pretrained is a {task} model: set model.task: {task} to train it on labelled lines")
    tokenizer = load_hf_tokenizer(cfg.model.pretrained)
    data = load_lm_data(cfg, teacher, tokenizer, out)
    train, val = data.train, data.val
    calib = {"input_ids": train[: cfg.calib_images]}
    student = make_student(teacher, cfg.quant, calib)
    summary = getattr(student, "qdistill_summary", None)
    if log is not None and summary is not None:
        log(str(summary))
    distil_from = TeacherEnsemble(load_lm_teachers(cfg, tokenizer, teacher)) if cfg.teachers else teacher
    save_hf_config(teacher, out)  # before training: best.pt / last.pt rebuild from it too
    tokenizer.save_pretrained(out)  # a finished run folder is itself a model folder
    rtn = {}
    if cfg.eval.rtn and cfg.quant is not None:  # calibrated, untrained
        metrics = lm_evaluation(student, teacher, data, cfg, teacher_on_text=False)
        rtn = {k: v for k, v in metrics.items() if k in _RTN_KEYS}
    objective = build_objective(cfg.method.name, student, distil_from, **cfg.method.params)
    if objective.uses_labels:
        raise DataError(f"method {cfg.method.name!r} needs labels; text data has none (use sqakd, squat or gor)")
    loader = TextBlockLoader(
        train, cfg.data.batch_size, shuffle=True, drop_last=len(train) > cfg.data.batch_size, seed=cfg.train.seed
    )
    val_loader = TextBlockLoader(val, cfg.data.eval_batch_size) if val is not None else None
    meta = {"config": cfg.to_dict(), "labels_used": False, "num_classes": None, "in_channels": None}
    trainer = Trainer(objective, loader, cfg.train, val_loader, out, meta)
    train_start = time.perf_counter()
    blocks = _blockwise(cfg, student, teacher, train, out, resume, trainer.device, log)
    blockwise_seconds = time.perf_counter() - train_start
    trainer.fit(resume=resume)
    train_seconds = time.perf_counter() - train_start
    info = {
        "model": {"source": "hf", "task": task, "pretrained": cfg.model.pretrained},
        "quant": None if cfg.quant is None else cfg.quant.to_dict(),
        "labels_used": False,
        "teacher": cfg.model.pretrained,
        "best_epoch": trainer.best["epoch"],
        "config": meta["config"],
    }
    save_model(out, student, info)
    results: dict[str, Any] = {
        "best_epoch": trainer.best["epoch"],
        "labels_used": False,
        "method": cfg.method.name,
        "weight_bits": cfg.quant.weight_bits if cfg.quant else 32,
        "act_bits": (cfg.quant.act_bits or 32) if cfg.quant else 32,
        "tokens_seen": cfg.train.epochs * trainer.steps_per_epoch * cfg.data.batch_size * cfg.data.block_size,
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
    }
    if blocks is not None:
        results.update(blockwise=blocks, blockwise_seconds=blockwise_seconds)
    results.update(_lm_results(lm_evaluation(student, teacher, data, cfg, trainer.device), rtn))
    results["wall_seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def evaluate_hf_run(run_dir: str | Path, which: str = "best") -> dict[str, float]:
    """Held-out perplexity, teacher perplexity, agreement and KL of a finished (or checkpointed) HF LM run,
    on the test split and windows its config records, or top-1 of a classifier run and of its teacher
    (what ``qdistill eval`` prints for such runs)."""
    from qdistill.experiment import load_run

    student, cfg, _ = load_run(run_dir, which)
    teacher, task = load_hf_model(cfg.model.pretrained, cfg.model.task, cfg.model.num_classes)
    if task == "sequence_classification":
        test = classifier_test_lines(cfg.data, load_hf_tokenizer(cfg.model.pretrained), cfg.data.test_subset)
        bs = cfg.data.eval_batch_size
        return _classifier_metrics(
            _predicted_classes(student, test, bs, "cpu"), _predicted_classes(teacher, test, bs, "cpu"), test["labels"]
        )
    data = load_lm_data(cfg, teacher, load_hf_tokenizer(cfg.model.pretrained), Path(run_dir))
    if data.test is None and data.generated_test is None:
        raise DataError(
            f"{run_dir}: its data has no held-out split (data.test_lines / data.test_fraction, data.gen_test_sequences)"
        )
    return _lm_results(lm_evaluation(student, teacher, data, cfg), {})


_RTN_KEYS = ("ppl", "gen_agreement", "gen_kl")


def _lm_results(metrics: dict[str, Any], rtn: dict[str, float]) -> dict[str, Any]:
    """`lm_evaluation`'s metrics with the RTN figures (``rtn_`` + key) and, on text, `lm_results`."""
    out = {**metrics, **{f"rtn_{k}": v for k, v in rtn.items() if k != "ppl"}}
    if "ppl" in metrics:
        out.update(lm_results(metrics["ppl"], metrics["teacher_ppl"], rtn.get("ppl")))
    return out


def _classifier_data(cfg: DataConfig, tokenizer: Any) -> tuple[dict[str, torch.Tensor], np.ndarray, int]:
    """Padded token rows with labels of ``<Label><n>:<m> text`` lines, the held-out mask and the class count."""
    from qdistill.data.text import read_text_units
    from qdistill.data.text_classes import split_prefixed_lines

    if cfg.root is None:
        raise ConfigError("data.root is required for data.format: text")
    if not 0 < cfg.test_fraction < 1 or cfg.test_lines is not None:
        raise ConfigError(
            "a text classifier holds out a random share of the lines: set data.test_fraction "
            "in (0, 1), not data.test_lines"
        )
    lines = split_prefixed_lines(read_text_units(cfg.root, cfg.text_field))
    enc = tokenizer(lines.texts, padding="max_length", truncation=True, max_length=cfg.block_size, return_tensors="pt")
    tensors = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.from_numpy(lines.labels),
    }
    held = np.random.default_rng(cfg.seed).random(len(lines.labels)) < cfg.test_fraction
    return tensors, held, len(lines.names)


def _rows(tensors: dict[str, torch.Tensor], index: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: v[torch.from_numpy(np.sort(index))] for k, v in tensors.items()}


def _test_index(held: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """``count`` held-out lines drawn at random (seeded), or all of them: the lines are in book order, so
    the first ``count`` would test the first books only."""
    index = np.flatnonzero(held)
    return index if count is None else np.random.default_rng(seed).permutation(index)[:count]


def classifier_test_lines(cfg: DataConfig, tokenizer: Any, count: int | None = None) -> dict[str, torch.Tensor]:
    """``count`` held-out lines of a text classifier run (seeded random, the same as its evaluation's),
    tokenized as in training, with ``labels`` (what its evaluation and its export's parity gate read)."""
    tensors, held, _ = _classifier_data(cfg, tokenizer)
    return _rows(tensors, _test_index(held, count, cfg.seed))


@torch.no_grad()
def _predicted_classes(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], batch: int, device: Any
) -> torch.Tensor:
    """The top-1 class of every line, in one pass: top-1 and agreement are both read from these."""
    was = model.training
    model.eval()
    try:
        loader = TokenBatchLoader(tensors, batch, with_labels=False)
        return torch.cat([logits_of(call_model(model, to_device(b, device))).argmax(-1).cpu() for b in loader])
    finally:
        model.train(was)


def _classifier_metrics(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, prefix: str = ""
) -> dict[str, float]:
    """Top-1 (percent) of the student's and teacher's predicted classes, their gap, and ``agreement``
    (percent of lines where the two predict the same class): with a weak teacher the gap alone hides how
    many lines flipped. ``prefix`` names the student's figures (``rtn_`` for the untrained baseline)."""

    def pct(hits: torch.Tensor) -> float:
        return 100.0 * int(hits.sum()) / hits.numel()  # exact: a float32 mean is off in the 7th digit

    top1, teacher_top1 = pct(student == labels), pct(teacher == labels)
    out = {f"{prefix}top1": top1, f"{prefix}agreement": pct(student == teacher)}
    if not prefix:
        out.update(teacher_top1=teacher_top1, gap=top1 - teacher_top1)
    return out


def _run_classifier(
    cfg: RunConfig, out: Path, resume: bool, log: Callable[[str], None] | None, start: float
) -> dict[str, Any]:
    """A sequence classifier on labelled lines: the teacher run (labels, ``quant: null``) or a student run
    (label-free methods never get the labels); top-1 of teacher, RTN and student on the held-out lines."""
    tokenizer = load_hf_tokenizer(cfg.model.pretrained)
    tensors, held, classes = _classifier_data(cfg.data, tokenizer)
    teacher, task = load_hf_model(cfg.model.pretrained, "sequence_classification", cfg.model.num_classes or classes)
    train = _rows(tensors, np.flatnonzero(~held))
    test = _rows(tensors, _test_index(held, cfg.data.test_subset, cfg.data.seed))
    order = np.random.default_rng(cfg.data.seed).permutation(len(train["labels"]))[: cfg.data.subset]
    n_val = round(cfg.data.val_fraction * len(order))
    val = _rows(train, order[:n_val]) if n_val else None
    train = _rows(train, order[n_val:])
    student = make_student(teacher, cfg.quant, {k: v[: cfg.calib_images] for k, v in train.items() if k != "labels"})
    summary = getattr(student, "qdistill_summary", None)
    if log is not None and summary is not None:
        log(str(summary))
    save_hf_config(teacher, out)
    tokenizer.save_pretrained(out)
    bs = cfg.data.eval_batch_size
    rtn = _predicted_classes(student, test, bs, "cpu") if cfg.eval.rtn and cfg.quant is not None else None
    objective = build_objective(cfg.method.name, student, teacher, **cfg.method.params)
    labels = objective.uses_labels
    loader = TokenBatchLoader(
        train,
        cfg.data.batch_size,
        with_labels=labels,
        shuffle=True,
        drop_last=len(train["labels"]) > cfg.data.batch_size,
        seed=cfg.train.seed,
    )
    val_loader = TokenBatchLoader(val, bs, with_labels=labels) if val is not None else None
    meta = {"config": cfg.to_dict(), "labels_used": labels, "num_classes": classes, "in_channels": None}
    trainer = Trainer(objective, loader, cfg.train, val_loader, out, meta)
    train_start = time.perf_counter()
    trainer.fit(resume=resume)
    train_seconds = time.perf_counter() - train_start
    save_model(
        out,
        student,
        {
            "model": {"source": "hf", "task": task, "pretrained": cfg.model.pretrained},
            "quant": None if cfg.quant is None else cfg.quant.to_dict(),
            "labels_used": labels,
            "teacher": cfg.model.pretrained,
            "best_epoch": trainer.best["epoch"],
            "config": meta["config"],
        },
    )
    teacher_classes = _predicted_classes(teacher, test, bs, trainer.device)
    results = {
        "best_epoch": trainer.best["epoch"],
        "labels_used": labels,
        "method": cfg.method.name,
        **_classifier_metrics(_predicted_classes(student, test, bs, trainer.device), teacher_classes, test["labels"]),
        **(
            _classifier_metrics(rtn, teacher_classes, test["labels"], "rtn_") if rtn is not None else {"rtn_top1": None}
        ),
        "test_lines": len(test["labels"]),
        "classes": classes,
        "tokens_seen": cfg.train.epochs * trainer.steps_per_epoch * cfg.data.batch_size * cfg.data.block_size,
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def load_lm_teachers(cfg: RunConfig, tokenizer: Any, model: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``teachers:`` of an LM run (each an HF folder or GGUF file), refused (ConfigError) unless
    each is a causal LM with ``model.pretrained``'s vocabulary: the ensemble mixes next-token
    distributions position by position, which only means something over one shared tokenizer."""
    vocab, width = tokenizer.get_vocab(), model.get_output_embeddings().weight.shape[0]
    teachers = []
    for where, section in cfg.teacher_sections():
        if section.source != "hf":
            raise ConfigError(f"{where}.source: the teachers of a model.source: hf run are hf models too")
        member, task = load_hf_model(section.pretrained, section.task)
        if task != "causal_lm":
            raise ConfigError(f"{where}.pretrained: {section.pretrained} is a {task} model, not a causal LM")
        other = load_hf_tokenizer(section.pretrained).get_vocab()
        if other != vocab or member.get_output_embeddings().weight.shape[0] != width:
            raise ConfigError(
                f"{where}.pretrained: {section.pretrained} has another vocabulary than model.pretrained "
                f"({len(other)} vs {len(vocab)} tokens, {member.get_output_embeddings().weight.shape[0]} vs "
                f"{width} logits): an LM ensemble needs teachers sharing one tokenizer"
            )
        teachers.append(member)
    return teachers
