"""headhunter eval: images, tables, summary and report checked against independent recomputation."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from headless import dump_dom
import torch
from PIL import Image

from headhunter.cli import load_pipeline, main
from headhunter.evaluate import PromptRow, load_settings_file, parse_setting, read_prompts
from headhunter.evaluate.stats import bootstrap_ci
from headhunter.metadata import read_settings
from headhunter.scorers import load_scorer

SETTINGS = ["base:", "hh: heads=L0H1,L1H2, pag_scale=3, softness=0.5", "layer: heads=L2, pag_scale=2, target=uniform"]


def eval_args(prompts, out):
    args = ["eval", "--prompts", str(prompts), "--seeds", "0,1", "--metrics", "colorfulness,sharpness", "--out", str(out),
            "--batch-size", "3"]
    for s in SETTINGS:
        args += ["--setting", s]
    return args


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red fox\nan old lighthouse\n")
    return path


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_eval_outputs_are_consistent_with_their_images(tmp_path, prompt_file, capsys):
    out = tmp_path / "run"
    assert main(eval_args(prompt_file, out)) == 0
    pngs = sorted(out.glob("images/*/*.png"))
    assert len(pngs) == 12
    pipe = load_pipeline("tiny-sd3", "cpu")
    for png in pngs:  # regenerate every image from its metadata alone, one image per call
        meta = read_settings(png)
        kwargs = {k: v for k, v in meta.items() if k not in ("model", "dtype", "setting", "prompt", "seed", "fingerprint")}
        if "pag_interval" in kwargs:
            kwargs["pag_interval"] = tuple(kwargs["pag_interval"])
        again = np.asarray(pipe(meta["prompt"], generator=torch.Generator().manual_seed(meta["seed"]), **kwargs).images[0])
        saved = np.asarray(Image.open(png).convert("RGB"))
        # The run generated 3 images per call; batched and single calls agree to ~1e-6, which can move a pixel
        # across an 8-bit rounding boundary: at most one level, on a tiny fraction of values.
        diff = np.abs(again.astype(int) - saved.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (png, diff.max(), (diff > 0).mean())
    rows = read_csv(out / "results.csv")
    assert len(rows) == 12
    scorers = {m: load_scorer(m) for m in ("colorfulness", "sharpness")}
    for row in rows:
        image = Image.open(out / row["image"]).convert("RGB")
        for metric, scorer in scorers.items():
            assert float(row[metric]) == pytest.approx(float(scorer([image], [row["prompt"]])[0]), rel=1e-6)
    summary = read_csv(out / "summary.csv")
    assert len(summary) == 3 * 2
    for entry in summary:
        values = [float(r[entry["metric"]]) for r in rows if r["setting"] == entry["setting"]]
        assert float(entry["mean"]) == pytest.approx(sum(values) / len(values), rel=1e-9)
        assert float(entry["ci_low"]) <= float(entry["mean"]) <= float(entry["ci_high"])
    assert "report: " in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_report_opens_in_headless_chromium_with_every_image_loaded(tmp_path, prompt_file):
    out = tmp_path / "run"
    assert main(eval_args(prompt_file, out)) == 0
    dom = dump_dom(out / "report.html")
    assert 'data-loaded="12" data-total="12"' in dom, dom[-2000:]
    assert "<svg" in dom and "headhunter eval" in dom and "--setting" in dom


def test_kill_midway_and_resume(tmp_path, prompt_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "headhunter", *eval_args(prompt_file, reference)], check=True,
                   capture_output=True, env=env, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "headhunter", *eval_args(prompt_file, out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = out / "results.jsonl"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if log.exists() and log.read_text().count("\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = {p: p.stat().st_mtime_ns for p in out.glob("images/*/*.png")}
    assert 3 <= len(before) < 12
    resumed = subprocess.run([sys.executable, "-m", "headhunter", *eval_args(prompt_file, out)], check=True,
                             capture_output=True, text=True, env=env, timeout=300)
    assert f"({12 - len(before)} generated now)" in resumed.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # no image regenerated
    drop = lambda rows: [{k: v for k, v in r.items() if k != "generation_seconds"} for r in rows]  # noqa: E731
    assert drop(read_csv(out / "results.csv")) == drop(read_csv(reference / "results.csv"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    images = [(r["setting"], r["prompt_index"], r["seed"]) for r in records if r["kind"] == "image"]
    scores = [(r["image_fingerprint"], r["metric"]) for r in records if r["kind"] == "score"]
    assert len(images) == len(set(images)) == 12 and len(scores) == len(set(scores)) == 24


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a, t: _replace(a, "--prompts", str(t / "missing.txt")), "does not exist"),
        (lambda a, t: _replace(a, "--prompts", str(_write(t / "empty.txt", "\n\n"))), "holds no prompts"),
        (lambda a, t: a + ["--setting", "bad: pag_sclae=3"], "unknown key 'pag_sclae'"),
        (lambda a, t: _replace(a, "--metrics", "colorfulness,blurriness"), "unknown scorer 'blurriness'"),
        (lambda a, t: a + ["--setting", "oops: heads=L9H0"], "L9H0: layer 9 is out of range"),
    ],
)
def test_bad_input_exits_2_before_any_image(tmp_path, prompt_file, capsys, change, message):
    out = tmp_path / "run"
    assert main(change(eval_args(prompt_file, out), tmp_path)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("headhunter")]
    assert len(err) == 1 and message in err[0], err
    assert not list(out.glob("images/*/*.png")) if out.exists() else True


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _write(path, text):
    path.write_text(text)
    return path


def test_setting_grammar():
    [s] = parse_setting("hh3: heads=L0H1,L1H2, pag_scale=3, softness=0.5, interval=0:0.5")
    assert s.name == "hh3" and s.kwargs == {"pag_heads": "L0H1,L1H2", "pag_scale": 3.0, "pag_softness": 0.5,
                                            "pag_interval": (0.0, 0.5)}
    sweep = parse_setting("w: heads=L1, pag_scale=1,3,5")
    assert [x.name for x in sweep] == ["w[pag_scale=1]", "w[pag_scale=3]", "w[pag_scale=5]"]
    assert [x.kwargs["pag_scale"] for x in sweep] == [1.0, 3.0, 5.0]
    assert [x.kwargs["pag_heads"] for x in parse_setting("alt: heads=L0H1|L1")] == ["L0H1", "L1"]
    assert parse_setting("base:")[0].kwargs == {}
    with pytest.raises(ValueError, match="NAME: key=value"):
        parse_setting("no colon")


def test_settings_file_and_prompt_files(tmp_path):
    (tmp_path / "s.toml").write_text('[base]\n[hh]\nheads = "L1H2,L0"\npag_scale = [1.0, 2.0]\n')
    names = [s.name for s in load_settings_file(tmp_path / "s.toml")]
    assert names == ["base", "hh[pag_scale=1.0]", "hh[pag_scale=2.0]"]
    (tmp_path / "p.csv").write_text("prompt,seed,style\na cat,3,golden hour\na dog,,\n")
    assert read_prompts(tmp_path / "p.csv") == [PromptRow("golden hour, a cat", 3), PromptRow("a dog", None)]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "seed": 1}\n{"prompt": "a boat"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == [PromptRow("a cat", 1), PromptRow("a boat", None)]


def test_bootstrap_interval():
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    mean, low, high = bootstrap_ci(list(range(100)))
    assert mean == pytest.approx(49.5) and 43 < low < 49.5 < high < 56
    assert bootstrap_ci([1.0, float("nan"), 3.0])[0] == 2.0


def test_two_processes_split_the_work_and_merge_the_outputs(tmp_path, prompt_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "headhunter", *eval_args(prompt_file, one)], check=True, capture_output=True,
                   env=env, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29533", "-m", "headhunter", *eval_args(prompt_file, two)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(two.glob("results.rank*.jsonl"))  # merged into one log at the end
    records = [json.loads(line) for line in (two / "results.jsonl").read_text().splitlines()]
    assert {r["process"] for r in records if r["kind"] == "image"} == {0, 1}  # both processes generated images
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("generation_seconds",)} for r in rows]  # noqa: E731
    a, b = drop(read_csv(one / "results.csv")), drop(read_csv(two / "results.csv"))
    assert [(r["setting"], r["prompt"], r["seed"]) for r in a] == [(r["setting"], r["prompt"], r["seed"]) for r in b]
    # the two runs batch different images together: a pixel may differ by one 8-bit level, nothing more
    for ra, rb in zip(a, b):
        for metric in ("colorfulness", "sharpness"):
            assert float(ra[metric]) == pytest.approx(float(rb[metric]), rel=1e-3)
    assert (two / "report.html").is_file()
