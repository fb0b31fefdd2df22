"""EKD from several Hugging Face LM teachers sharing one tokenizer: the loss by hand, a whole run, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qdistill.distill import TeacherEnsemble, build_objective
from qdistill.distill.student import make_student
from qdistill.errors import ConfigError
from qdistill.experiment import RunConfig, run_experiment
from qdistill.hf_experiment import load_lm_teachers
from qdistill.models.hf import load_hf_model, load_hf_tokenizer

from .conftest import _tokenizer, save_tiny
from .test_hf_run import _config

LAYER = "model.layers.1.mlp.down_proj"  # SQuaT's default tap on a Llama: the last FFN layer's input


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory) -> list:
    return [save_tiny("llama", tmp_path_factory.mktemp(f"teacher{seed}"), seed=seed) for seed in (1, 2)]


def _ekd_config(student, teachers, out, **method) -> RunConfig:
    d = _config(student, out, act_bits=8, act_granularity="token").to_dict()
    d["method"] = {"name": "ekd", "params": {"temperature": 2.0, **method}}
    d["teachers"] = [{"source": "hf", "pretrained": str(t)} for t in teachers]
    return RunConfig.from_dict(d)


def test_ekd_loss_is_kl_to_the_mean_distribution_plus_mean_projected_feature_mse(tiny_llama, two_teachers, tmp_path):
    cfg = _ekd_config(tiny_llama, two_teachers, tmp_path / "unused")
    model, _ = load_hf_model(str(tiny_llama))
    teachers = load_lm_teachers(cfg, load_hf_tokenizer(str(tiny_llama)), model)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    student = make_student(model, cfg.quant, {"input_ids": ids})
    objective = build_objective("ekd", student, TeacherEnsemble(teachers), temperature=2.0)
    seen: dict[str, torch.Tensor] = {}
    act_quant = student.get_submodule(LAYER).act_quant
    hooks = [act_quant.register_forward_hook(lambda m, i, o: seen.__setitem__("student", o))]
    for k, t in enumerate(teachers):
        hooks.append(t.get_submodule(LAYER).register_forward_pre_hook(lambda m, a, k=k: seen.__setitem__(k, a[0])))
    loss, logs = objective({"input_ids": ids})
    for h in hooks:
        h.remove()
    with torch.no_grad():  # independently: T^2 KL(mean_k softmax(z_k / T) || softmax(z_s / T)) per token
        mix = torch.stack([F.softmax(t(ids).logits / 2.0, -1) for t in teachers]).mean(0)
        log_q = F.log_softmax(student(ids).logits / 2.0, -1)
        kd = 4.0 * (mix * (mix.log() - log_q)).sum(-1).mean()
        feat = torch.stack([F.mse_loss(seen["student"], act_quant.project(seen[k])) for k in range(2)]).mean()
    assert logs["kd"] == pytest.approx(float(kd), rel=1e-5)
    assert logs["feat"] == pytest.approx(float(feat), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(kd + feat), rel=1e-5)
    objective.close()


def test_ekd_run_from_two_lm_teachers(tiny_llama, two_teachers, tmp_path):
    res = run_experiment(_ekd_config(tiny_llama, two_teachers, tmp_path / "run"))
    assert res["method"] == "ekd" and res["labels_used"] is False
    assert all(map(torch.isfinite, torch.tensor([res["ppl"], res["rtn_ppl"], res["teacher_ppl"]])))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert not any("members" in k or "teacher" in k for k in state)


def test_teachers_with_another_vocabulary_are_refused(tiny_llama, two_teachers, tmp_path):
    other = save_tiny("llama", tmp_path / "other", seed=3)
    _tokenizer(200).save_pretrained(other)  # same model, another tokenizer
    cfg = _ekd_config(tiny_llama, [two_teachers[0], other], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"teachers\[1\].pretrained: .* another vocabulary than model.pretrained"):
        run_experiment(cfg)
    d = cfg.to_dict()
    d["teachers"] = [{"name": "smallcnn", "pretrained": str(other)}]
    with pytest.raises(ConfigError, match=r"teachers\[0\].source"):
        run_experiment(RunConfig.from_dict(d))
