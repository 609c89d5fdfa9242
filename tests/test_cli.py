import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headhunter.cli import load_pipeline, main
from headhunter.metadata import read_settings


def test_generate_writes_pngs_whose_metadata_regenerates_them(tmp_path, capsys):
    code = main(["generate", "--prompt", "a red fox", "--seed", "3,4", "--heads", "L1H2@0.5,L0", "--pag-scale", "2",
                 "--cfg", "2.5", "--target", "query_mean", "--out", str(tmp_path)])
    assert code == 0
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in files] == ["a-red-fox-s3-hh.png", "a-red-fox-s4-hh.png"]
    assert str(files[0]) in capsys.readouterr().out
    settings = read_settings(files[0])
    expected_keys = {"model", "prompt", "seed", "num_inference_steps", "width", "height", "guidance_scale",
                     "negative_prompt", "pag_heads", "pag_scale", "pag_softness", "pag_target", "pag_scope", "pag_interval"}
    assert expected_keys <= set(settings)
    assert (settings["seed"], settings["pag_heads"], settings["guidance_scale"]) == (3, "L1H2@0.5,L0", 2.5)
    # Regenerate from the metadata alone, through the pipeline API
    pipe = load_pipeline(settings["model"], "cpu")
    kwargs = {k: v for k, v in settings.items() if k not in ("model", "prompt", "seed")}
    kwargs["pag_interval"] = tuple(kwargs["pag_interval"])
    again = pipe(settings["prompt"], generator=torch.Generator().manual_seed(settings["seed"]), **kwargs).images[0]
    # generate made both seeds in one call; a single call agrees to ~1e-6, at most one 8-bit level on a few values
    diff = np.abs(np.asarray(again).astype(int) - np.asarray(Image.open(files[0]).convert("RGB")).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_generate_flux_tiny(tmp_path):
    assert main(["generate", "--model", "tiny-flux", "--prompt", "x", "--heads", "L3H1", "--out", str(tmp_path)]) == 0
    assert read_settings(next(tmp_path.glob("*.png")))["true_cfg_scale"] == 1.0


def test_chroma_generates_searches_and_evaluates_from_the_command_line(tmp_path, capsys):
    from diffusers import ChromaPipeline

    from headhunter.testing import build_pipeline, tiny_components

    folder = tmp_path / "chroma"  # a diffusers folder as a hub download looks (model_index.json: ChromaPipeline)
    build_pipeline(ChromaPipeline, tiny_components("tiny-chroma")).save_pretrained(folder)
    for model in ("tiny-chroma", str(folder)):
        out = tmp_path / f"images-{Path(model).name}"
        assert main(["generate", "--model", model, "--prompt", "a red fox", "--negative-prompt", "blurry",
                     "--cfg", "2", "--heads", "L3H1", "--seed", "0,1", "--out", str(out), "--steps", "2",
                     "--size", "32"]) == 0
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == 2 and read_settings(pngs[0])["guidance_scale"] == 2.0
    assert type(load_pipeline(str(folder), "cpu")).__name__ == "HeadHunterChromaPipeline"
    run = tmp_path / "run"
    assert main(["search", "--model", "tiny-chroma", "--objective", "colorfulness", "--prompt", "a parrot", "--seeds",
                 "0", "--top-k", "1", "--rounds", "1", "--run-dir", str(run)]) == 0
    assert json.loads((run / "selected.json").read_text())["family"] == "tiny-chroma"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na boat\n")
    assert main(["eval", "--model", "tiny-chroma", "--prompts", str(prompts), "--seeds", "0", "--setting",
                 "plain: pag_scale=0", "--setting", "heads: heads=L1H0, pag_scale=3", "--metrics", "colorfulness",
                 "--baseline", "plain", "--out", str(tmp_path / "eval")]) == 0


def test_demo_writes_the_files_it_reports_and_the_search_raises_the_objective(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    reported = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(reported) == 9 and reported[-1].endswith("report.html")
    assert f"report: {tmp_path / 'eval' / 'report.html'}" in out
    for path in reported:
        assert Path(path).is_file(), path
        if path.endswith(".png"):
            assert Image.open(path).size[0] >= 3
    guided, unguided = (np.asarray(Image.open(tmp_path / f"0-{k}.png"), float) for k in ("guided", "unguided"))
    assert np.abs(guided - unguided).mean() > 0.5
    # on the trained toy model, the heads found for warmth make held-out "warm light" prompts warmer
    line = next(line for line in out.splitlines() if line.startswith("3. mean warmth on 16 held-out prompts"))
    before, after = (float(x) for x in __import__("re").findall(r"(-?\d+\.\d+)", line)[:2])
    assert after > before + 0.03 and "(rose)" in line
    from headhunter import HeadSet

    assert len(HeadSet.coerce(str(tmp_path / "search" / "selected.json"))) == 2


def test_score_command_with_a_user_registered_objective(tmp_path, capsys, monkeypatch):
    assert main(["generate", "--prompt", "a red fox", "--seed", "1", "--out", str(tmp_path)]) == 0
    image = next(tmp_path.glob("*.png"))
    (tmp_path / "my_objectives.py").write_text(
        "from headhunter.scorers import register_scorer\n"
        "@register_scorer('test-mean-red')\n"
        "def mean_red(images, prompts):\n"
        "    return images[:, 0].flatten(1).mean(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    capsys.readouterr()
    assert main(["score", str(image), "--objective", "test-mean-red + 0.5*brightness", "--import", "my_objectives",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["prompt"] == "a red fox"  # read from the PNG metadata
    from headhunter.scorers import load_scorer

    expected = load_scorer("test-mean-red + 0.5*brightness")([Image.open(image).convert("RGB")], ["a red fox"])
    assert result["score"] == pytest.approx(float(expected[0]))


@pytest.mark.parametrize("args,message", [(["--objective", "nope"], "unknown scorer 'nope'"),
                                          (["--objective", "0.5*"], "bad objective term"),
                                          (["--objective", "pickscore"], "neither cached nor reachable")])
def test_score_bad_input_exit_2(tmp_path, capsys, args, message):
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    assert main(["score", str(img), "--prompt", "x", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("headhunter")]
    assert len(err) == 1 and __import__("re").search(message, err[0])


@pytest.mark.parametrize("args,message", [(["--objective", "nope", "--prompt", "x"], "unknown scorer 'nope'"),
                                          (["--objective", "brightness"], "give at least one --prompt"),
                                          (["--objective", "brightness", "--prompt", "x", "--candidates", "L7"],
                                           "L7: layer 7 is out of range"),
                                          (["--objective", "brightness", "--prompt", "x", "--top-k", "20"],
                                           "exceeds the 12 candidate heads")])
def test_search_bad_input_exit_2(tmp_path, capsys, args, message):
    assert main(["search", "--run-dir", str(tmp_path / "run"), *args]) == 2
    # only headhunter's own lines: transformers may log its torchvision notice to the same stream
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("headhunter")]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run" / "scores.jsonl").exists()


def test_bench_runs_the_benchmark_script_and_writes_its_figures(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "headhunter", "bench", "search", "--layers", "2", "--heads", "2", "--prompts", "1",
         "--seeds", "2", "--top-k", "1", "--repeats", "1", "--size", "32", "--objective", "brightness",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(next(tmp_path.glob("search-*.json")).read_text())
    assert result["images_per_round"]["batched (per-sample plans, shared prefix)"] == 4 * 2
    assert (tmp_path / next(tmp_path.glob("search-*.md")).name).read_text().startswith("Random-weight")
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects an unknown benchmark name
        main(["bench", "nope"])
    assert exit_info.value.code == 2


def test_help_does_not_import_torch():
    code = ("import sys\nfrom headhunter.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('heavy:', sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "heavy: []" in proc.stdout, proc.stdout + proc.stderr


def test_a_long_prompt_gives_one_truncation_line(tmp_path):
    prompt = "a very long prompt about a lighthouse on a cliff at dusk with waves " * 8
    proc = subprocess.run(
        [sys.executable, "-m", "headhunter", "generate", "--prompt", prompt, "--seed", "0,1,2", "--out", str(tmp_path)],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "not shown" in lines[0], proc.stderr


def test_generate_never_overwrites(tmp_path, capsys):
    for _ in range(2):
        assert main(["generate", "--prompt", "a red fox", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a-red-fox-s3-2.png", "a-red-fox-s3.png"]
    assert all(read_settings(p)["seed"] == 3 for p in tmp_path.glob("*.png"))


def test_generate_with_a_cheap_mode_records_it_and_the_png_regenerates_it(tmp_path):
    argv = ["generate", "--prompt", "a red fox", "--heads", "L1H2,L0", "--cfg", "2.5", "--out", str(tmp_path)]
    assert main([*argv, "--pag-reuse", "2"]) == 0
    settings = read_settings(next(tmp_path.glob("*.png")))
    assert settings["pag_reuse"] == 2 and "pag_mode" not in settings  # only what was asked for
    pipe = load_pipeline(settings["model"], "cpu")
    kwargs = {k: v for k, v in settings.items() if k not in ("model", "prompt", "seed")}
    kwargs["pag_interval"] = tuple(kwargs["pag_interval"])
    again = pipe(settings["prompt"], generator=torch.Generator().manual_seed(settings["seed"]), **kwargs).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(next(tmp_path.glob("*.png"))).convert("RGB")))


def test_search_with_pag_reuse_scores_with_it_and_keeps_it_in_the_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["search", "--objective", "brightness", "--prompt", "a fox", "--top-k", "1", "--candidates", "L0-1",
            "--run-dir", str(run_dir)]
    assert main([*argv, "--pag-reuse", "2"]) == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert "pag_reuse" in json.dumps(config)
    # tiny-sd3 scores at 2 steps: with reuse 2 the perturbed rows run on the first only (counted by the engine)
    reused = _block_evaluations(capsys.readouterr().out)
    assert main([*argv[:-1], str(tmp_path / "exact")]) == 0
    exact = _block_evaluations(capsys.readouterr().out)
    assert reused < exact
    # the run's config holds the reuse: resuming it without --pag-reuse is refused, not mixed
    assert main(argv) == 2
    assert "holds a different search" in capsys.readouterr().err


def _block_evaluations(out: str) -> float:
    line = next(line for line in out.splitlines() if line.startswith("images generated:"))
    return float(line.rsplit(":", 1)[1])
