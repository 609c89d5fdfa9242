"""HeadHunter search: Algorithm 1 against a one-image-at-a-time reference, resumability under SIGKILL, two processes,
config safety, NaN handling, halving."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from headhunter import HeadSet
from headhunter.scorers import load_scorer
from headhunter.search import HeadHunter
from headhunter.testing import tiny_pipeline

PROMPTS = ["a red fox", "an old lighthouse"]
SEEDS = [0, 1]
GEN = dict(num_inference_steps=2, height=32, width=32, guidance_scale=0.0)
OBJECTIVE = "brightness"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("tiny-sd3")


def reference_greedy(pipe, objective, top_k, rounds, candidates):
    """Algorithm 1 written plainly: every candidate, every pair, one image per pipeline call."""
    score = load_scorer(objective)
    pairs = [(p, s) for p in PROMPTS for s in SEEDS]
    selected, per_item = [], {}
    for r in range(rounds):
        means = {}
        for cand in [c for c in candidates if c not in selected]:
            values = []
            for j, (prompt, seed) in enumerate(pairs):
                image = pipe(prompt, generator=torch.Generator().manual_seed(seed), pag_heads=selected + [cand],
                             pag_scale=3.0, output_type="pt", **GEN).images
                values.append(float(score(image, [prompt])[0]))
                per_item[(r, cand, j)] = values[-1]
            means[cand] = sum(values) / len(values)
        ranked = sorted(means, key=lambda c: (-means[c], candidates.index(c)))
        selected += ranked[:top_k]
    return selected, per_item


def run_search(pipe, run_dir, **kw):
    options = dict(top_k=2, rounds=2, batch_size=5, progress=False, **GEN)
    options.update(kw)
    return HeadHunter(pipe, options.pop("objective", OBJECTIVE), PROMPTS, SEEDS, run_dir=run_dir, **options).run()


def logged(run_dir):
    out = {}
    for path in Path(run_dir).glob("scores*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            key = (rec["round"], tuple(rec["head"]), rec["pair"])
            assert key not in out, f"score recorded twice: {key}"
            out[key] = rec["score"]
    return out


def test_greedy_matches_one_image_at_a_time_reference(pipe, tmp_path):
    candidates = [(l, h) for l in range(3) for h in range(4)]
    expected, per_item = reference_greedy(pipe, OBJECTIVE, 2, 2, candidates)
    result = run_search(pipe, tmp_path)
    assert [(h.layer, h.head) for h in result.selected] == expected
    scores = logged(tmp_path)
    assert set(scores) == set(per_item)  # selected heads were never regenerated in later rounds
    worst = max(abs(scores[k] - v) for k, v in per_item.items())
    assert worst <= 1e-5, worst
    assert result.images_generated == 12 * 4 + 10 * 4
    assert [t.images_generated for t in result.rounds] == [48, 40]
    assert sum(t.block_evaluations for t in result.rounds) == pytest.approx(result.block_evaluations)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["images_generated"] for r in summary["rounds"]] == [48, 40]
    # the run directory holds what DESIGN.md promises
    for name in ("config.json", "selected.json", "summary.json", "rankings/round-0.csv", "rankings/round-1.csv",
                 "heatmaps/round-0.png", "heatmaps/round-1.png"):
        assert (tmp_path / name).is_file(), name
    assert HeadSet.coerce(str(tmp_path / "selected.json")) == result.selected
    assert list(HeadSet.coerce(str(tmp_path / "selected.json"))) == list(result.selected)


def test_changed_config_is_refused(pipe, tmp_path):
    run_search(pipe, tmp_path, rounds=1, candidates="L0")
    with pytest.raises(ValueError, match="different search .*top_k"):
        run_search(pipe, tmp_path, rounds=1, candidates="L0", top_k=3)
    assert run_search(pipe, tmp_path, rounds=1, candidates="L0").images_generated == 16  # same config resumes


def test_nan_for_a_candidate_is_reported_and_ranked_last(pipe, tmp_path):
    poisoned = pipe(PROMPTS[0], generator=torch.Generator().manual_seed(SEEDS[0]), pag_heads=[(1, 2)], pag_scale=3.0,
                    output_type="pt", **GEN).images
    brightness = load_scorer("brightness")

    def objective(images, prompts):
        scores = brightness(images, prompts)
        for i in range(len(images)):
            if torch.allclose(images[i], poisoned[0], atol=1e-4):
                scores[i] = float("nan")
        return scores

    result = run_search(pipe, tmp_path, objective=objective, rounds=1, top_k=2, candidates="L0-1")
    assert result.failed == ["L1H2"]
    assert result.rounds[0].rows[-1]["head"] == "L1H2" and math.isnan(result.rounds[0].rows[-1]["score"])
    assert "L1H2" not in str(result.selected)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed_candidates"] == ["L1H2"]


def test_halving_scores_survivors_on_all_pairs_and_costs_less(pipe, tmp_path):
    greedy = run_search(pipe, tmp_path / "g", rounds=1, top_k=2)
    halving = run_search(pipe, tmp_path / "h", rounds=1, top_k=2, strategy="halving", halving_initial_pairs=1,
                         halving_keep=0.5)
    rows = halving.rounds[0].rows
    full = [r for r in rows if r["pairs"] == 4]
    assert all(r["pairs"] >= 1 for r in rows) and len(full) >= 2
    assert {str(h) for h in halving.selected} <= {r["head"] for r in full}
    # 12 candidates on 1 pair, 6 on 2, 3 on 4 (each later stage reuses the earlier pairs' scores)
    assert halving.images_generated == 12 + 6 + 3 * 2 < greedy.images_generated
    assert halving.block_evaluations < greedy.block_evaluations


def test_coarse_scores_every_pair_at_its_steps_and_records_the_steps_its_heads_are_for(pipe, tmp_path):
    """``coarse`` is greedy with every image at ``coarse_steps``: the same scores as greedy run at those steps (the
    reference), block evaluations in the ratio of the steps, and the config keeps the generation steps."""
    options = dict(rounds=1, top_k=2, candidates="L0-1", num_inference_steps=3)
    fine = run_search(pipe, tmp_path / "fine", **options)
    at_two = run_search(pipe, tmp_path / "two", **{**options, "num_inference_steps": 2})
    coarse = run_search(pipe, tmp_path / "coarse", **options, strategy="coarse", coarse_steps=2)
    assert coarse.rounds[0].rows == at_two.rounds[0].rows and str(coarse.selected) == str(at_two.selected)
    assert coarse.block_evaluations == at_two.block_evaluations
    assert coarse.block_evaluations / fine.block_evaluations == pytest.approx(2 / 3)
    config = json.loads((tmp_path / "coarse" / "config.json").read_text())
    assert (config["strategy"], config["num_inference_steps"], config["coarse_steps"]) == ("coarse", 3, 2)
    assert run_search(pipe, tmp_path / "coarse", **options, strategy="coarse", coarse_steps=2).images_generated == 32
    with pytest.raises(ValueError, match="coarse_steps"):
        run_search(pipe, tmp_path / "bad", **options, strategy="coarse", coarse_steps=4)
    with pytest.raises(ValueError, match="coarse_steps"):
        run_search(pipe, tmp_path / "bad", **options, coarse_steps=2)


def _cli(run_dir, *extra):
    return [sys.executable, "-m", "headhunter", "search", "--objective", OBJECTIVE, "--prompt", PROMPTS[0],
            "--prompt", PROMPTS[1], "--seeds", "0,1", "--top-k", "2", "--rounds", "2", "--batch-size", "2",
            "--run-dir", str(run_dir), *extra]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference), check=True, capture_output=True, env=_env(), timeout=300)
    interrupted = tmp_path / "interrupted"
    kills = 0
    for threshold in (6, 30, 60):
        proc = subprocess.Popen(_cli(interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        log = interrupted / "scores.jsonl"
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if log.exists() and log.read_text().count("\n") >= threshold:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.01)
        proc.wait()
    assert kills >= 2, "the search finished before it could be killed"
    subprocess.run(_cli(interrupted), check=True, capture_output=True, env=_env(), timeout=300)
    a, b = logged(reference), logged(interrupted)
    assert set(a) == set(b) and max(abs(a[k] - b[k]) for k in a) <= 1e-5
    sel = lambda d: json.loads((d / "selected.json").read_text())["heads"]  # noqa: E731
    assert sel(reference) == sel(interrupted)


def test_two_processes_give_the_same_result_as_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(one), check=True, capture_output=True, env=_env(), timeout=300)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "headhunter", *_cli(two)[3:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(two.glob("scores.rank*-of-2.jsonl"))) == 2  # both processes did work
    a, b = logged(one), logged(two)
    assert set(a) == set(b) and max(abs(a[k] - b[k]) for k in a) <= 1e-5
    sel = lambda d: json.loads((d / "selected.json").read_text())["heads"]  # noqa: E731
    assert sel(one) == sel(two)


def test_block_evaluations_are_counted_per_row_and_block(pipe, tmp_path):
    hunter = HeadHunter(pipe, OBJECTIVE, PROMPTS, SEEDS, top_k=1, rounds=1, run_dir=tmp_path, progress=False, **GEN)
    # one image perturbing layer 2 of 3, no CFG, 2 steps: blocks 0-1 see 1 row, block 2 sees 2 rows -> 4 per step
    hunter.evaluate([(0, (2, 0), 0)], [])
    assert hunter._last_batch_blocks == 8
    # two images forking at layer 0 and 2: the batch forks at layer 0, so every block sees 2 + 2 rows
    hunter.evaluate([(0, (0, 1), 0), (0, (2, 0), 1)], [])
    assert hunter._last_batch_blocks == 2 * 3 * 4


def test_saved_images_carry_their_settings(pipe, tmp_path):
    from headhunter.metadata import read_settings

    run_search(pipe, tmp_path, rounds=1, top_k=1, candidates="L2H0-1", save_images=True)
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 2 * 4
    meta = read_settings(tmp_path / "images" / "r0-L2H1-p3.png")
    assert (meta["prompt"], meta["seed"], meta["pag_heads"], meta["pag_scale"]) == (PROMPTS[1], SEEDS[1], "L2H1", 3.0)


def test_should_stop_cancels_and_the_run_resumes(pipe, tmp_path):
    from headhunter.search import SearchCancelled

    steps = []  # the transformer calls of the batch in flight (one per denoising step)

    def stop_in_the_third_batch():
        # asked before each batch and between steps: true once the third batch has denoised a step
        return len(logged(tmp_path)) == 2 * 5 and len(steps) >= 1

    def count_steps(module, args):
        if len(logged(tmp_path)) == 2 * 5:
            steps.append(1)

    handle = pipe.transformer.register_forward_pre_hook(count_steps)
    try:
        with pytest.raises(SearchCancelled, match="stopped at step 1; run it again with the same settings to resume"):
            run_search(pipe, tmp_path, rounds=1, should_stop=stop_in_the_third_batch)
    finally:
        handle.remove()
    assert len(steps) == 1 and GEN["num_inference_steps"] > 1  # it did not finish the batch's steps
    assert len(logged(tmp_path)) == 2 * 5  # two batches of five were kept, the third not logged
    assert run_search(pipe, tmp_path, rounds=1).images_generated == 48


def test_halving_stages_spread_pairs_over_prompts(pipe, tmp_path):
    from headhunter.search import spread_order

    # prompts × seeds are prompt-major: (fox,0) (fox,1) (light,0) (light,1); stage pairs go round-robin over prompts
    assert spread_order([("fox", 0), ("fox", 1), ("light", 0), ("light", 1)]) == [0, 2, 1, 3]
    assert spread_order([("a", 0), ("a", 1), ("a", 2), ("b", 0), ("c", 0)]) == [0, 3, 4, 1, 2]
    run_search(pipe, tmp_path, rounds=1, top_k=2, strategy="halving", halving_initial_pairs=2, halving_keep=0.5)
    scored = {}
    for (r, head, pair) in logged(tmp_path):
        scored.setdefault(head, set()).add(pair)
    stage_one = [pairs for pairs in scored.values() if len(pairs) == 2]
    assert stage_one and all(pairs == {0, 2} for pairs in stage_one)  # both prompts, not the first prompt's seeds


def test_config_records_dtype_device_and_versions_and_refuses_a_dtype_change(tmp_path, caplog):
    import diffusers

    import headhunter

    fp32 = tiny_pipeline("tiny-sd3")
    run_search(fp32, tmp_path, rounds=1, candidates="L0H0-1", top_k=1)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["dtype"] == "float32" and config["model"]
    assert json.loads((tmp_path / "selected.json").read_text())["family"] == "sd3"  # offered to SD3 studios only
    assert config["environment"] == {"device_type": "cpu", "headhunter": headhunter.__version__,
                                     "diffusers": diffusers.__version__, "torch": torch.__version__}
    bf16 = tiny_pipeline("tiny-sd3").to(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="different search .*dtype"):
        run_search(bf16, tmp_path, rounds=1, candidates="L0H0-1", top_k=1)
    # another torch version (or device) is the same search: it resumes, with a warning
    config["environment"]["torch"] = "0.0.1"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING", logger="headhunter"):
        result = run_search(fp32, tmp_path, rounds=1, candidates="L0H0-1", top_k=1)
    assert result.images_generated == 8
    assert any("torch: 0.0.1 -> " + torch.__version__ in r.getMessage() for r in caplog.records)


def test_a_run_that_fails_before_its_first_score_leaves_nothing(pipe, tmp_path):
    def broken(images, prompts):
        raise RuntimeError("objective crashed")

    with pytest.raises(RuntimeError, match="objective crashed"):
        run_search(pipe, tmp_path / "new", objective=broken, rounds=1, candidates="L0", top_k=1)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's file\n")
    with pytest.raises(RuntimeError):
        run_search(pipe, existing, objective=broken, rounds=1, candidates="L0", top_k=1)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    # the corrected call is not refused as "a different search"
    assert run_search(pipe, existing, rounds=1, candidates="L0", top_k=1).images_generated == 16
