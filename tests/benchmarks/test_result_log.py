"""ResultLog: resume across the workers of one table, and never mix two budgets in it."""

import json

import pytest
from _common import ResultLog, checkpointed_epochs, read_family, resumed_schedule

from qdistill.errors import ConfigError
from qdistill.train.checkpoint import save_checkpoint

BUDGET = {"student": "4000 train images, 1 epoch(s)", "test_images": 1000, "hardware": "2-core CPU, torch threads=1"}


def _write(path, budget, keys):
    path.write_text(json.dumps({"meta": {"budget": budget}, "results": [{"key": k, "test_top1": 50.0} for k in keys]}))


def test_rerun_with_the_same_budget_resumes(tmp_path):
    log = ResultLog("t", {"budget": BUDGET}, root=tmp_path)
    log.add({"key": "a", "test_top1": 1.0})
    again = ResultLog("t", {"budget": {**BUDGET, "hardware": "GPU H200"}}, root=tmp_path)  # hardware is not budget
    assert again.has("a") and not again.has("b")


def test_rerun_with_another_budget_is_refused_naming_the_entry(tmp_path):
    ResultLog("t", {"budget": BUDGET}, root=tmp_path).add({"key": "a"})
    with pytest.raises(
        ConfigError,
        match=r"^t\.json holds results for budget student='4000 train images, 1 epoch\(s\)', not '4000 train images, 5 epoch\(s\)'",
    ):
        ResultLog("t", {"budget": {**BUDGET, "student": "4000 train images, 5 epoch(s)"}}, root=tmp_path)


def test_an_empty_log_takes_a_new_budget(tmp_path):
    ResultLog("t", {"budget": BUDGET}, root=tmp_path).save()
    log = ResultLog("t", {"budget": {**BUDGET, "test_images": 10000}}, root=tmp_path)
    assert log.meta["budget"]["test_images"] == 10000


def test_a_worker_sees_the_rows_of_the_other_workers_of_its_table(tmp_path):
    _write(tmp_path / "tab.json", BUDGET, ["teacher", "x-s0"])
    _write(tmp_path / "tab_c.json", BUDGET, ["x-s2"])
    _write(tmp_path / "tab_gpu.json", BUDGET, ["x-s9"])  # a GPU run is a table of its own
    _write(tmp_path / "other.json", BUDGET, ["x-s1"])
    worker = ResultLog("tab_b", {"budget": BUDGET}, family="tab", root=tmp_path)
    assert worker.has("x-s0") and worker.has("x-s2") and worker.has("teacher")
    assert not worker.has("x-s9") and not worker.has("x-s1")
    assert worker.get("x-s0")["test_top1"] == 50.0
    _write(tmp_path / "tab_c.json", BUDGET, ["x-s2", "x-s3"])  # written by another worker meanwhile
    assert worker.has("x-s3")
    worker.add({"key": "x-s4"})
    assert [r["key"] for r in json.loads((tmp_path / "tab_b.json").read_text())["results"]] == ["x-s4"]


def test_a_name_outside_the_family_keeps_to_itself(tmp_path):
    _write(tmp_path / "tab.json", BUDGET, ["x-s0"])
    long = ResultLog("tab_long", {"budget": {**BUDGET, "student": "20000 images"}}, root=tmp_path)
    assert not long.has("x-s0")
    other = ResultLog("cifar_long", {"budget": {**BUDGET, "student": "20000 images"}}, family="tab", root=tmp_path)
    assert not other.has("x-s0")


def test_a_worker_of_another_budget_is_refused_by_the_log_and_by_rendering(tmp_path):
    _write(tmp_path / "tab.json", BUDGET, ["x-s0"])
    _write(tmp_path / "tab_b.json", {**BUDGET, "test_images": 500}, ["x-s1"])
    with pytest.raises(ConfigError, match="tab_b.json holds results for budget test_images=500, not 1000"):
        ResultLog("tab", {"budget": BUDGET}, root=tmp_path)
    with pytest.raises(ConfigError, match="tab_b.json holds results for budget test_images=500, not 1000"):
        read_family(tmp_path, "tab")


def test_read_family_merges_missing_keys_only(tmp_path):
    _write(tmp_path / "tab.json", BUDGET, ["a", "b"])
    (tmp_path / "tab_b.json").write_text(
        json.dumps({"meta": {"budget": BUDGET}, "results": [{"key": "b", "test_top1": 9.0}, {"key": "c"}]})
    )
    data = read_family(tmp_path, "tab")
    assert [(r["key"], r.get("test_top1")) for r in data["results"]] == [("a", 50.0), ("b", 50.0), ("c", None)]
    assert read_family(tmp_path, "none") is None


def test_checkpointed_epochs_split_a_step_budget_into_epochs_of_at_most_50():
    assert checkpointed_epochs(250) == (5, 50)
    assert checkpointed_epochs(130) == (3, 50)  # round(2.6): about the budget, never a longer epoch
    assert checkpointed_epochs(20) == (1, 20)
    assert checkpointed_epochs(7, per_epoch=3) == (2, 3)


def test_a_resumed_run_keeps_the_schedule_its_checkpoint_records(tmp_path):
    def timing() -> int:
        raise AssertionError("a resumed run must not be timed again")

    save_checkpoint({"meta": {"config": {"train": {"epochs": 7, "max_steps": 50}}}}, tmp_path / "last.pt")
    assert resumed_schedule(tmp_path, timing) == (7, 50)
    assert resumed_schedule(tmp_path / "fresh", lambda: 120) == (2, 50)  # no checkpoint: 120 steps in epochs of 50


def test_the_recorded_command_drops_this_machines_paths():
    import encoder_minilm

    argv = ["benchmarks/encoder_minilm.py", "--threads", "2", "--data", "/x/kjv.txt.gz", "--runs=r", "--steps", "400"]
    assert encoder_minilm.command(argv) == "benchmarks/encoder_minilm.py --threads 2 --steps 400"
