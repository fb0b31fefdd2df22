"""The trainer and evaluate on any iterable of batches: torch DataLoaders, tuples, dict batches, [B, T, V] logits."""

import warnings
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qdistill.batch import call_model, logits_of
from qdistill.distill import build_objective
from qdistill.distill.objectives import Objective
from qdistill.distill.student import make_student
from qdistill.errors import CheckpointError, ConfigError, DataError
from qdistill.quant import QuantConfig
from qdistill.train import TrainConfig, Trainer, evaluate, save_checkpoint
from qdistill.train import trainer as trainer_mod

FAST = {"progress": False, "hessian_probes": 1}


def _student(teacher):
    torch.manual_seed(5)
    return make_student(teacher, QuantConfig(method="ewgs", weight_bits=2, act_bits=2), torch.randn(16, 1, 8, 8))


def _images(n=48):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_plain_dataloader_trains_and_resumes_exactly_at_the_epoch_boundary(teacher, tmp_path):
    def run(out, epochs, resume=False):
        loader = DataLoader(TensorDataset(_images()), batch_size=16, shuffle=True)
        trainer = Trainer(
            build_objective("sqakd", _student(teacher), teacher), loader, TrainConfig(epochs=3, **FAST), loader, out
        )
        trainer.cfg = TrainConfig(epochs=epochs, **FAST)  # stop early, as a kill at the epoch end would
        trainer.fit(resume=resume)
        return trainer

    full = run(tmp_path / "full", 3)
    assert [r["epoch"] for r in full.history] == [1, 2, 3] and "val_agreement" in full.history[-1]
    run(tmp_path / "cut", 1)
    with pytest.warns(UserWarning, match="restarts at the last completed epoch") as caught:
        resumed = run(tmp_path / "cut", 3, resume=True)
    assert len([w for w in caught if "BatchLoader" in str(w.message)]) == 1
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=True)["student"] for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_kd"] for r in resumed.history] == [r["train_kd"] for r in full.history]


def test_dataloader_gets_no_mid_epoch_checkpoint_and_refuses_a_mid_epoch_one(teacher, tmp_path, monkeypatch):
    loader = DataLoader(TensorDataset(_images()), batch_size=16)
    writes = []
    real = trainer_mod.save_checkpoint
    monkeypatch.setattr(
        trainer_mod, "save_checkpoint", lambda s, p: (writes.append((p.name, s.get("step"))), real(s, p))
    )
    cfg = TrainConfig(epochs=1, checkpoint_every=1, **FAST)
    with pytest.warns(UserWarning, match="not a qdistill BatchLoader"):
        Trainer(build_objective("sqakd", _student(teacher), teacher), loader, cfg, out_dir=tmp_path).fit()
    assert writes == [("last.pt", 0), ("best.pt", None)]
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    save_checkpoint({**state, "step": 1}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="stopped mid-epoch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(build_objective("sqakd", _student(teacher), teacher), loader, cfg, out_dir=tmp_path).fit(resume=True)


def test_labelled_tuples_train_a_supervised_method(teacher):
    labels = torch.arange(48) % 3
    loader = DataLoader(TensorDataset(_images(), labels), batch_size=16, shuffle=True)
    hist = Trainer(build_objective("qat", _student(teacher), None), loader, TrainConfig(epochs=1, **FAST), loader).fit()
    assert "val_top1" in hist[0] and "train_ce" in hist[0]


class EpochRecorder(list):
    """A list of batches that records every ``set_epoch`` call."""

    def __init__(self, batches):
        super().__init__(batches)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_set_epoch_is_called_when_present(teacher):
    loader = EpochRecorder(_images().split(16))
    Trainer(
        build_objective("sqakd", _student(teacher), teacher), loader, TrainConfig(epochs=2, ewgs_every=0, **FAST)
    ).fit()
    assert loader.epochs == [0, 1]


def test_an_iterable_without_len_needs_max_steps(teacher):
    batches = (b for b in _images().split(16))
    with pytest.raises(ConfigError, match="train.max_steps"):
        Trainer(build_objective("sqakd", _student(teacher), teacher), batches, TrainConfig(**FAST))


# -- dict batches, token logits ------------------------------------------------------------------
class TinyLM(nn.Module):
    def __init__(self, vocab=7):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 4), nn.Linear(4, vocab)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.head(self.emb(input_ids))}


class TokenMSE(Objective):
    """A label-free per-token loss on dict batches (padding masked out)."""

    def forward(self, inputs, labels=None):
        s = logits_of(call_model(self.student, inputs))
        with torch.no_grad():
            t = logits_of(call_model(self.teacher, inputs))
        mask = inputs["attention_mask"][..., None]
        return ((s - t) ** 2 * mask).sum() / mask.sum(), {}


def _token_batches(with_labels=False):
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        ids = torch.randint(0, 7, (4, 5), generator=gen)
        batch = {"input_ids": ids, "attention_mask": (torch.arange(5) < 3).long().expand(4, 5)}
        if with_labels:
            batch["labels"] = ids
        out.append(batch)
    return out


def test_dict_batches_train_a_token_model_and_validate_on_its_logits():
    torch.manual_seed(0)
    teacher, student = TinyLM(), TinyLM()
    hist = Trainer(
        TokenMSE(student, teacher), _token_batches(), TrainConfig(epochs=3, lr=0.05, **FAST), _token_batches()
    ).fit()
    assert hist[-1]["train_loss"] < hist[0]["train_loss"] and "val_agreement" in hist[-1]


def test_label_free_method_refuses_dict_batches_with_labels():
    trainer = Trainer(TokenMSE(TinyLM(), TinyLM()), _token_batches(with_labels=True), TrainConfig(epochs=1, **FAST))
    with pytest.raises(DataError, match="label-free method TokenMSE was given labelled batches"):
        trainer.fit()


@dataclass
class Output:  # stands in for a transformers ModelOutput: logits as an attribute
    logits: torch.Tensor


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, input_ids, attention_mask=None):
        return Output(self.logits)


def _one_hot_logits(argmax, vocab=4):
    return nn.functional.one_hot(torch.tensor(argmax), vocab).float() + 0.1 * torch.arange(vocab)


def test_evaluate_token_logits_ignores_padding_and_minus_100():
    student = Fixed(_one_hot_logits([[0, 1, 2], [3, 3, 0]]))
    teacher = Fixed(_one_hot_logits([[0, 0, 2], [3, 1, 0]]))
    batch = {
        "input_ids": torch.zeros(2, 3, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[0, 2, -100], [3, 3, 1]]),
    }
    # counted positions: (0,0) (0,1) (1,0) (1,1); right: (0,0) (1,0) (1,1); teacher agrees at (0,0) (1,0)
    assert evaluate(student, [batch], teacher) == {"images": 2.0, "top1": 75.0, "top5": 100.0, "agreement": 50.0}


def test_evaluate_classifier_top1_top5_by_hand():
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])
    labels = torch.tensor([0, 0, 4])  # right; 6th choice; 5th choice
    model = nn.Identity()
    out = evaluate(model, [(logits, labels)])
    assert out == {"images": 3.0, "top1": 100 / 3, "top5": 200 / 3}
