"""Re-running ``headhunter eval`` on the same folder: what still matches is reused, what changed is regenerated, and
no score is ever reported under settings it was not made with. Checked against fresh folders (the independent
reference: the same command on an empty folder) and file modification times."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from headhunter.cli import main
from headhunter.evaluate import Evaluation, Setting
from headhunter.evaluate.stats import bootstrap_ci, paired_comparison
from headhunter.scorers import load_scorer, register_scorer
from headhunter.testing import tiny_pipeline


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_eval(prompts, out, *settings, metrics="colorfulness", extra=()):
    args = ["eval", "--prompts", str(prompts), "--seeds", "0", "--metrics", metrics, "--out", str(out),
            "--batch-size", "2", *extra]
    for setting in settings:
        args += ["--setting", setting]
    assert main(args) == 0


def pngs(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in sorted(out.glob("images/*/*.png"))}


def table(out, *columns):
    return [tuple(r[c] for c in columns) for r in read_csv(out / "results.csv")]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red fox\nan old lighthouse\n")
    return path


def test_changed_setting_is_regenerated_and_the_rest_reused(tmp_path, prompts, capsys):
    out = tmp_path / "run"
    run_eval(prompts, out, "base:", "hh: heads=L0H1,L1H2, pag_scale=3")
    first = pngs(out)
    capsys.readouterr()
    run_eval(prompts, out, "base:", "hh: heads=L0H1,L1H2, pag_scale=30")
    printed = capsys.readouterr().out
    assert "base: 2 reused" in printed and "hh: 0 reused, 2 regenerated (settings, prompt or model changed)" in printed
    assert "(2 generated now)" in printed
    second = pngs(out)
    assert {k: v for k, v in second.items() if k.startswith("images/base/")} == \
           {k: v for k, v in first.items() if k.startswith("images/base/")}  # untouched
    assert all(second[k] != first[k] for k in second if k.startswith("images/hh/"))  # replaced
    fresh = tmp_path / "fresh"
    run_eval(prompts, fresh, "base:", "hh: heads=L0H1,L1H2, pag_scale=30")
    assert table(out, "setting", "prompt", "seed", "colorfulness") == \
           table(fresh, "setting", "prompt", "seed", "colorfulness")
    # no row of the pag_scale=3 images survives anywhere in the log
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["kind"] == "image"]) == 4
    assert {r["fingerprint"] for r in records if r["kind"] == "image"} == {r["fingerprint"] for r in read_csv(out / "results.csv")}


@pytest.mark.parametrize("change", ["size", "steps", "prompt"])
def test_size_steps_or_prompt_change_regenerates(tmp_path, prompts, change):
    # one image per call where the prompt changes: the changed prompt is regenerated alone, and a batched call
    # differs from a single one by ~1e-6 (enough to move a pixel across an 8-bit level)
    one_per_call = ["--batch-size", "1"] if change == "prompt" else []
    out = tmp_path / "run"
    run_eval(prompts, out, "base:", extra=one_per_call)
    first = pngs(out)
    extra = {"size": ["--size", "48"], "steps": ["--steps", "3"], "prompt": one_per_call}[change]
    if change == "prompt":
        prompts.write_text("a red fox\na blue boat\n")
    run_eval(prompts, out, "base:", extra=extra)
    second = pngs(out)
    fresh = tmp_path / "fresh"
    run_eval(prompts, fresh, "base:", extra=extra)
    assert table(out, "prompt", "colorfulness") == table(fresh, "prompt", "colorfulness")
    changed = [k for k in second if second[k] != first[k]]
    assert changed == (["images/base/001-s0.png"] if change == "prompt" else sorted(second))
    if change == "size":
        assert Image.open(out / "images/base/000-s0.png").size == (48, 48)


def test_adding_a_metric_scores_the_images_on_disk_and_removing_one_drops_it(tmp_path, prompts, capsys):
    out = tmp_path / "run"
    run_eval(prompts, out, "base:", "hh: heads=L1")
    first = pngs(out)
    capsys.readouterr()
    run_eval(prompts, out, "base:", "hh: heads=L1", metrics="colorfulness,sharpness")
    printed = capsys.readouterr().out
    assert "(0 generated now)" in printed and "2 reused image(s) to score" in printed
    assert pngs(out) == first
    sharp = load_scorer("sharpness")
    for row in read_csv(out / "results.csv"):
        image = Image.open(out / row["image"]).convert("RGB")
        assert float(row["sharpness"]) == pytest.approx(float(sharp([image], [row["prompt"]])[0]), rel=1e-6)
    run_eval(prompts, out, "base:", "hh: heads=L1", metrics="sharpness")
    assert "colorfulness" not in read_csv(out / "results.csv")[0]
    assert {r["metric"] for r in read_csv(out / "summary.csv")} == {"sharpness"}
    assert pngs(out) == first


def test_truncated_png_is_regenerated_and_fresh_starts_over(tmp_path, prompts, capsys):
    out = tmp_path / "run"
    run_eval(prompts, out, "base:")
    reference = table(out, "prompt", "colorfulness")
    damaged = out / "images/base/000-s0.png"
    damaged.write_bytes(damaged.read_bytes()[:60])
    capsys.readouterr()
    run_eval(prompts, out, "base:")
    assert "1 regenerated (unreadable on disk)" in capsys.readouterr().out
    assert table(out, "prompt", "colorfulness") == reference
    Image.open(damaged).load()
    before = pngs(out)
    run_eval(prompts, out, "base:", extra=["--fresh"])
    assert all(pngs(out)[k] != before[k] for k in before)
    assert table(out, "prompt", "colorfulness") == reference


def test_duplicate_seeds_are_merged_and_the_report_shows_the_stored_command(tmp_path, prompts):
    out = tmp_path / "run"
    assert main(["eval", "--prompts", str(prompts), "--seeds", "0,0,1", "--metrics", "brightness", "--out", str(out),
                 "--setting", "base:"]) == 0
    assert sorted((r["prompt_index"], r["seed"]) for r in read_csv(out / "results.csv")) == \
           [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    report = (out / "report.html").read_text()
    assert "--seeds 0,0,1" in report
    # a second command that only adds a metric: the images are still those of the first command, and the report
    # says which command made them and which wrote the report
    assert main(["eval", "--prompts", str(prompts), "--seeds", "0,1", "--metrics", "brightness,contrast",
                 "--out", str(out), "--setting", "base:"]) == 0
    report = (out / "report.html").read_text()
    made, _, latest = report.partition("this report was last written by")
    assert "--seeds 0,0,1" in made and "brightness,contrast" in latest


def test_n_counts_finite_scores_only(tmp_path):
    @register_scorer("test-nan-on-fox")
    def nan_on_fox(images, prompts):
        return torch.tensor([float("nan") if "fox" in p else 1.0 for p in prompts])

    pipe = tiny_pipeline("tiny-sd3")
    result = Evaluation(pipe, ["a red fox", "a boat", "a cat"], [0], [Setting("base", {})], ["test-nan-on-fox"],
                        tmp_path / "run", defaults={"num_inference_steps": 2, "width": 32, "height": 32},
                        progress=False).run()
    [row] = result.summary
    assert row["n"] == 2 and row["mean"] == 1.0


def test_baseline_paired_difference_resamples_prompts(tmp_path, prompts):
    prompts.write_text("a red fox\nan old lighthouse\na blue boat\na cat on a wall\n")
    out = tmp_path / "run"
    run_eval(prompts, out, "base:", "hh: heads=L0H1,L1H2,L2", metrics="colorfulness",
             extra=["--seeds", "0,1", "--baseline", "base"])
    rows = read_csv(out / "results.csv")
    by = {(r["setting"], r["prompt_index"], r["seed"]): float(r["colorfulness"]) for r in rows}
    diffs = [by[("hh", p, s)] - by[("base", p, s)] for p in "0123" for s in "01"]
    [entry] = [r for r in read_csv(out / "summary.csv") if r["setting"] == "hh"]
    assert float(entry["diff_mean"]) == pytest.approx(np.mean(diffs), rel=1e-9)
    assert float(entry["win_rate"]) == pytest.approx(np.mean([d > 0 for d in diffs]))
    assert entry["baseline"] == "base" and int(entry["pairs"]) == 8
    assert float(entry["diff_ci_low"]) <= float(entry["diff_mean"]) <= float(entry["diff_ci_high"])
    [base_entry] = [r for r in read_csv(out / "summary.csv") if r["setting"] == "base"]
    assert base_entry["diff_mean"] == ""
    report = (out / "report.html").read_text()
    assert "difference to base" in report and "win rate" in report


def test_paired_bootstrap_draws_prompts_not_images():
    # Two seeds per prompt with equal differences: resampling prompts is an ordinary bootstrap over the four
    # per-prompt differences (same generator, same draws); resampling images would treat eight values as independent.
    per_prompt = [0.5, -1.0, 2.0, 0.25]
    pairs = [(p, d + 10.0, 10.0) for p, d in enumerate(per_prompt) for _ in range(2)]
    result = paired_comparison(pairs)
    assert (result["diff_mean"], result["diff_ci_low"], result["diff_ci_high"]) == pytest.approx(bootstrap_ci(per_prompt))
    images = bootstrap_ci([d for d in per_prompt for _ in range(2)])
    assert images[2] - images[1] < result["diff_ci_high"] - result["diff_ci_low"]
    assert result["win_rate"] == pytest.approx(0.75) and result["pairs"] == 8
    assert paired_comparison([(0, 1.0, 1.0), (1, float("nan"), 0.0)])["win_rate"] == 0.5


def test_difference_chart_keeps_zero_on_the_axis():
    import re

    from headhunter.evaluate.report import _bar_chart

    svg = _bar_chart("m", [{"setting": "hh", "mean": -1.0, "ci_low": -1.5, "ci_high": -0.5}])
    zero = float(re.search(r'<line x1="([\d.]+)" y1="20"', svg).group(1))
    x, width = (float(v) for v in re.search(r'<rect x="([\d.]+)" y="\d+" width="([\d.]+)"', svg).groups())
    whisker_high = float(re.findall(r'<line x1="[\d.]+" y1="[\d.]+" x2="([\d.]+)"', svg)[1])
    # the bar runs from the mean to 0; the interval's upper end (−0.5) lies between them, left of 0
    assert x + width == pytest.approx(zero, abs=0.11) and x < whisker_high < zero
