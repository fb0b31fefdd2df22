"""render_results.py: argparse (--help writes nothing, --check writes nothing and fails on stale docs) and the
headline's confidence intervals, against hand-computed values."""

import json
import math

import pytest
import render_results

TEMPLATE = (
    "# R\n\n{{table:headline}}\n\nteacher {{value:fmnist:teacher}}, gap {{value:fmnist:qat-ewgs-2:gap}}, {{value:nope}}, "
    "{{value:fmnist:steps}} x {{value:fmnist:train_images}}\n"
)
README = "# x\n\n## Results\n\nintro\n\n<!-- headline -->\nold\n<!-- /headline -->\n\n## Next\n"


def _repo(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    runs = [{"key": "teacher", "test_top1": 90.0}]
    runs += [
        {"key": f"qat-ewgs-w2a2-s{s}", "method": "qat", "quantizer": "ewgs", "bits": 2, "seed": s, "test_top1": v}
        for s, v in enumerate((86.0, 87.0, 88.0))
    ]
    meta = {"budget": {"student": "60000 train images (10% held out), 2 epoch(s)", "test_images": 10000}}
    (results / "fmnist_table.json").write_text(json.dumps({"meta": meta, "results": runs}))
    (tmp_path / "benchmarks" / "RESULTS.md.in").write_text(TEMPLATE)
    (tmp_path / "README.md").write_text(README)
    return tmp_path


def test_gap_interval_by_hand():
    gap, half = render_results.gap_interval([86.0, 87.0, 88.0], 90.0, 10000)
    seeds = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2 df) * sample std / sqrt(n)
    test_set = 1.96 * math.sqrt((87 * 13 + 90 * 10) / 10000)  # binomial, in points
    assert gap == pytest.approx(-3.0)
    assert half == pytest.approx(math.sqrt(seeds**2 + test_set**2), rel=1e-5)
    assert half == pytest.approx(2.6365, abs=1e-3)  # sqrt(2.4842^2 + 0.8833^2)


def test_one_seed_interval_is_the_test_set_only():
    gap, half = render_results.gap_interval([80.0], 90.0, 1000)
    assert gap == -10.0
    assert half == pytest.approx(1.96 * math.sqrt((80 * 20 + 90 * 10) / 1000))


def test_help_prints_usage_and_writes_nothing(tmp_path, capsys):
    repo = _repo(tmp_path)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as done:
        render_results.main(["--help", "--repo", str(repo)])
    assert done.value.code == 0
    assert "--check" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_render_then_check(tmp_path):
    repo = _repo(tmp_path)
    assert render_results.main(["--repo", str(repo), "--check", "--outputs", "results"]) == 1  # no RESULTS.md yet
    assert not (repo / "docs" / "RESULTS.md").exists()
    assert render_results.main(["--repo", str(repo), "--outputs", "results", "readme"]) == 0
    text = (repo / "docs" / "RESULTS.md").read_text()
    assert "teacher 90.00, gap -3.00, n/a, 421 x 54,000" in text  # 54000 // 128 steps: the last short batch is dropped
    assert (
        "| ours, Fashion-MNIST SmallCNN (other dataset), EWGS (labels) | not run | -3.00 [-5.6, -0.4] (3) | not run |"
        in text
    )
    readme = (repo / "README.md").read_text()
    assert readme.startswith("# x\n\n## Results\n\nintro\n\n<!-- headline -->\n| gap to FP teacher")
    assert "\nold\n" not in readme
    assert readme.endswith("<!-- /headline -->\n\n## Next\n")
    assert not (repo / "docs" / "img").exists()  # plots were not asked for
    assert render_results.main(["--repo", str(repo), "--check"]) == 0
    (repo / "docs" / "RESULTS.md").write_text(text.replace("-3.00", "-2.00"))
    assert render_results.main(["--repo", str(repo), "--check"]) == 1
    assert "-2.00" in (repo / "docs" / "RESULTS.md").read_text()  # --check wrote nothing


def test_committed_docs_match_the_committed_json():
    """docs/RESULTS.md and the README headline are exactly what the JSON renders to."""
    assert render_results.main(["--check", "--outputs", "results", "readme"]) == 0


def test_gpu_schedule_table_ignores_the_probe_and_unfinished_jobs(tmp_path):
    repo = _repo(tmp_path)
    results = repo / "benchmarks" / "results"
    (results / "fmnist_table.json").unlink()
    runs = [
        {"key": "teacher_before", "test_top1": 70.0},
        {"key": "teacher", "test_top1": 80.0},
        {
            "key": "probe-sqakd-ewgs-w2a2",
            "method": "sqakd",
            "quantizer": "ewgs",
            "bits": 2,
            "probe": True,
            "test_top1": 50.0,
        },
        {
            "key": "sqakd-ewgs-w2a2",
            "method": "sqakd",
            "quantizer": "ewgs",
            "bits": 2,
            "probe": False,
            "test_top1": 60.0,
        },
        {
            "key": "qat-ewgs-w2a2",
            "method": "qat",
            "quantizer": "ewgs",
            "bits": 2,
            "probe": False,
            "history": [{"epoch": 1}],
        },
    ]
    meta = {"budget": {"test_images": 10000}, "plan": {"jobs": ["sqakd-ewgs-w2a2", "qat-ewgs-w2a2"], "epochs": 7}}
    (results / "gpu_schedule.json").write_text(json.dumps({"meta": meta, "results": runs}))
    (repo / "benchmarks" / "RESULTS.md.in").write_text(
        "{{table:gpu}}\n\nplan {{table:gpu_plan}}\n\n{{table:headline}}\n"
    )
    assert render_results.main(["--repo", str(repo), "--outputs", "results"]) == 0
    text = (repo / "docs" / "RESULTS.md").read_text()
    assert "| SQAKD + EWGS (label-free) | not run | 60.00 (1) [-20.00] | not run |" in text
    assert "standalone" not in text and "diverged" not in text  # the running job is neither a cell nor a failure
    assert "plan jobs: ['sqakd-ewgs-w2a2', 'qat-ewgs-w2a2'], epochs: 7" in text
    half = 1.96 * math.sqrt((60 * 40 + 80 * 20) / 10000)  # one seed: the test set only
    assert (
        f"| ours, CIFAR-10 JPEG ResNet-20, GPU schedule, SQAKD + EWGS (label-free) | not run | -20.00 [{-20 - half:+.1f}, {-20 + half:+.1f}] (1*) |"
        in text
    )
