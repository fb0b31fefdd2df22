"""gpu_schedule.py: the epoch plan by hand, and ``--smoke`` end to end on CPU (fake images), cut short and resumed."""

import json

import gpu_schedule
import pytest
from _common import ResultLog


def test_plan_fits_the_most_job_pairs_that_get_min_epochs():
    # 6 jobs: (600 - 6*10) // (6*5) = 18 < 20; 4 jobs: (600 - 4*10) // (4*5) = 28
    assert gpu_schedule.plan_epochs(600, 5, 10, 20, 1200) == (4, 28)
    assert gpu_schedule.plan_epochs(1e6, 1, 0, 20, 1200) == (6, 1200)  # capped at the paper's schedule
    assert gpu_schedule.plan_epochs(100, 5, 10, 20, 1200) == (2, 8)  # (100 - 20) // 10: the W2A2 pair gets what fits
    assert gpu_schedule.plan_epochs(-5, 5, 10, 20, 1200) == (2, 1)


def _results(out):
    return {r["key"]: r for r in json.loads((out / "gpu_schedule.json").read_text())["results"]}


def test_smoke_writes_each_epoch_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--smoke", "--out", str(out), "--data", str(tmp_path / "absent"), "--teacher", str(tmp_path / "absent.th")]
    add = ResultLog.add

    def killed_after_first_epoch(self, record):  # the run is cut short right after an epoch was written
        add(self, record)
        if record["key"] == "teacher" and "test_top1" not in record:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultLog, "add", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        gpu_schedule.main(argv)
    partial = _results(out)["teacher"]
    assert [row["epoch"] for row in partial["history"]] == [1] and "val_top1" in partial["history"][0]
    monkeypatch.setattr(ResultLog, "add", add)

    gpu_schedule.main(argv)
    res = _results(out)
    meta = json.loads((out / "gpu_schedule.json").read_text())["meta"]
    assert meta["plan"]["jobs"] == ["sqakd-ewgs-w2a2", "qat-ewgs-w2a2"] and meta["plan"]["epochs"] == 1
    assert set(res) == {"teacher_before", "teacher", "probe-sqakd-ewgs-w2a2", "sqakd-ewgs-w2a2", "qat-ewgs-w2a2"}
    for key in ("teacher", "probe-sqakd-ewgs-w2a2", "sqakd-ewgs-w2a2", "qat-ewgs-w2a2"):
        assert 0 <= res[key]["test_top1"] <= 100 and len(res[key]["history"]) == 1
    assert res["sqakd-ewgs-w2a2"]["labels_used"] is False and res["qat-ewgs-w2a2"]["labels_used"] is True
    assert 0 <= res["sqakd-ewgs-w2a2"]["test_agreement"] <= 100

    gpu_schedule.main(argv)  # everything is done: a rerun trains nothing
    assert _results(out) == res
