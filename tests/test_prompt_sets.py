"""Prompt sets with categories (PartiPrompts TSV, DrawBench CSV, GenEval metadata JSONL, HPSv2 JSON; fixtures written
here in each file's real column layout) travel through the log, results.csv, summary.csv and the report; --export
writes each benchmark's own layout, checked against what its README and evaluator code expect, written out by hand."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from headless import dump_dom
from PIL import Image

from headhunter.cli import main
from headhunter.evaluate import read_prompts

PARTI = ("Prompt\tCategory\tChallenge\tNote\n"
         "bond\tAbstract\tBasic\t\n"
         "A green heart\tAbstract\tColors\t\n"
         "a red apple on a wooden table\tFood & Beverage\tColors\tfrom DrawBench\n")
DRAWBENCH = ('Prompts,Category\n'
             'A red colored car.,Colors\n'
             '"A black apple and a green backpack.",Colors\n'
             'Three cats and one dog sitting on the grass.,Counting\n')
GENEVAL = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "two_object", "include": [{"class": "toilet", "count": 1}, {"class": "bench", "count": 1}],
     "prompt": "a photo of a toilet and a bench"},
    {"tag": "single_object", "include": [{"class": "cow", "count": 1}], "prompt": "a photo of a cow"},
]
HPSV2 = {"anime": ["a girl with a red umbrella", "a robot in a field"], "photo": ["a lighthouse at dusk"]}

# What each file's rows are, by hand: (prompt, category).
EXPECTED = {
    "PartiPrompts.tsv": [("bond", "Abstract"), ("A green heart", "Abstract"),
                         ("a red apple on a wooden table", "Food & Beverage")],
    "drawbench.csv": [("A red colored car.", "Colors"), ("A black apple and a green backpack.", "Colors"),
                      ("Three cats and one dog sitting on the grass.", "Counting")],
    "evaluation_metadata.jsonl": [("a photo of a bench", "single_object"),
                                  ("a photo of a toilet and a bench", "two_object"),
                                  ("a photo of a cow", "single_object")],
    "hpsv2.json": [("a girl with a red umbrella", "anime"), ("a robot in a field", "anime"),
                   ("a lighthouse at dusk", "photo")],
}
METRICS = ("colorfulness", "sharpness")


def _write_fixtures(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in EXPECTED}
    paths["PartiPrompts.tsv"].write_text(PARTI)
    paths["drawbench.csv"].write_text(DRAWBENCH)
    paths["evaluation_metadata.jsonl"].write_text("".join(json.dumps(r) + "\n" for r in GENEVAL))
    paths["hpsv2.json"].write_text(json.dumps(HPSV2))
    return paths


def _eval(prompts: Path, out: Path, *extra: str) -> int:
    return main(["eval", "--prompts", str(prompts), "--seeds", "0,1", "--metrics", ",".join(METRICS), "--out", str(out),
                 "--steps", "1", "--size", "32", "--setting", "base:", "--setting", "hh: heads=L1H2,L0H1, pag_scale=3",
                 "--baseline", "base", *extra])


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return _write_fixtures(tmp_path_factory.mktemp("prompt-sets"))


def test_each_format_reads_its_prompts_and_categories(fixtures):
    for name, expected in EXPECTED.items():
        rows = read_prompts(fixtures[name])
        assert [(r.prompt, r.category) for r in rows] == expected, name
    parti = read_prompts(fixtures["PartiPrompts.tsv"])
    assert [r.record["Challenge"] for r in parti] == ["Basic", "Colors", "Colors"]
    assert [r.record for r in read_prompts(fixtures["evaluation_metadata.jsonl"])] == GENEVAL


@pytest.fixture(scope="module")
def runs(fixtures, tmp_path_factory):
    root = tmp_path_factory.mktemp("category-runs")
    for name in EXPECTED:
        assert _eval(fixtures[name], root / name) == 0
    return root


@pytest.mark.parametrize("name", list(EXPECTED))
def test_categories_travel_through_the_log_results_and_summary(runs, name):
    out = runs / name
    expected = EXPECTED[name]
    results = _csv(out / "results.csv")
    assert len(results) == 2 * len(expected) * 2
    for row in results:
        assert (row["prompt"], row["category"]) == expected[int(row["prompt_index"])]
    logged = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    images = [r for r in logged if r["kind"] == "image"]
    assert len(images) == len(results) and all(r["category"] == expected[r["prompt_index"]][1] for r in images)

    summary = _csv(out / "summary.csv")
    categories = list(dict.fromkeys(c for _, c in expected))
    assert [(r["setting"], r["metric"], r["category"]) for r in summary] == [
        (s, m, c) for s in ("base", "hh") for m in METRICS for c in ["all", *categories]]
    for entry in summary:  # recomputed by hand from results.csv
        def chosen(r):
            return entry["category"] == "all" or r["category"] == entry["category"]

        values = [float(r[entry["metric"]]) for r in results if r["setting"] == entry["setting"] and chosen(r)]
        assert int(entry["n"]) == len(values)
        assert float(entry["mean"]) == pytest.approx(np.mean(values), rel=1e-9)
        if entry["setting"] == "hh":
            base = {(r["prompt_index"], r["seed"]): float(r[entry["metric"]]) for r in results
                    if r["setting"] == "base" and chosen(r)}
            diffs = [float(r[entry["metric"]]) - base[(r["prompt_index"], r["seed"])] for r in results
                     if r["setting"] == "hh" and chosen(r)]
            assert int(entry["pairs"]) == len(diffs)
            assert float(entry["diff_mean"]) == pytest.approx(np.mean(diffs), rel=1e-9, abs=1e-12)
            assert float(entry["win_rate"]) == pytest.approx(np.mean([1 if d > 0 else 0.5 if d == 0 else 0
                                                                      for d in diffs]))
        else:
            assert entry["diff_mean"] == ""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_report_breaks_every_metric_and_difference_down_by_category(runs, name):
    out = runs / name
    categories = [c.replace("&", "&amp;") for c in dict.fromkeys(c for _, c in EXPECTED[name])]
    dom = dump_dom(out / "report.html")
    assert 'data-loaded="12" data-total="12"' in dom, dom[-2000:]
    summary = _csv(out / "summary.csv")
    for metric in METRICS:
        table = re.search(rf'<table class="by-category" data-metric="{metric}">(.*?)</table>', dom, re.S)
        assert table, metric
        rows = dict(re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", table.group(1), re.S))
        assert list(rows) == ["category", *categories]  # the header, then one row per category
        for entry in (e for e in summary if e["metric"] == metric and e["category"] != "all"):
            cells = re.findall(r"<td>(.*?)</td>", rows[entry["category"].replace("&", "&amp;")], re.S)
            cell = cells[["base", "hh"].index(entry["setting"])]
            assert cell.startswith(f"{float(entry['mean']):.4g} "), (cell, entry)
            if entry["setting"] == "hh":
                assert f"− base: {float(entry['diff_mean']):+.4g} [" in cell, cell
    # the overall chart and table show the overall rows only, one per setting and metric
    assert dom.count('aria-label="colorfulness"') == 2  # the means and the differences


def _geneval_discovery(folder: Path) -> list[tuple[dict, str]]:
    """GenEval's evaluate_images.py finds images this way (its README's layout): numbered subfolders, each with a
    metadata.jsonl read by json.load and samples/ holding files matching \\d+\\.png."""
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        with open(sub / "metadata.jsonl") as fp:
            metadata = json.load(fp)
        found += [(metadata, name.name) for name in sorted((sub / "samples").iterdir())
                  if name.is_file() and re.match(r"\d+\.png", name.name)]
    return found


def test_geneval_export_matches_its_documented_layout(fixtures, runs, tmp_path):
    out, target = runs / "evaluation_metadata.jsonl", tmp_path / "geneval"
    assert _eval(fixtures["evaluation_metadata.jsonl"], out, "--export", "geneval", str(target)) == 0
    expected = {"headhunter-benchmark.json"}
    for setting in ("base", "hh"):
        for index in range(3):
            expected.add(f"{setting}/{index:05d}/metadata.jsonl")
            expected |= {f"{setting}/{index:05d}/samples/{seed:04d}.png" for seed in (0, 1)}
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == expected
    for setting in ("base", "hh"):
        for index, record in enumerate(GENEVAL):
            assert json.loads((target / setting / f"{index:05d}" / "metadata.jsonl").read_text()) == record
            for seed in (0, 1):
                saved = out / "images" / setting / f"{index:03d}-s{seed}.png"
                assert (target / setting / f"{index:05d}/samples/{seed:04d}.png").read_bytes() == saved.read_bytes()
        found = _geneval_discovery(target / setting)
        assert [(m["prompt"], name) for m, name in found] == [(r["prompt"], f"{s:04d}.png") for r in GENEVAL
                                                             for s in (0, 1)]


def test_t2i_compbench_and_hpsv2_exports_and_a_rerun_leaves_nothing_stale(fixtures, runs, tmp_path):
    drawbench, target = runs / "drawbench.csv", tmp_path / "compbench"
    assert _eval(fixtures["drawbench.csv"], drawbench, "--export", "t2i-compbench", str(target)) == 0
    for setting in ("base", "hh"):
        for category, prompts in (("Colors", EXPECTED["drawbench.csv"][:2]), ("Counting", EXPECTED["drawbench.csv"][2:])):
            samples = target / setting / category / "samples"
            names = sorted((p.name for p in samples.iterdir()), key=lambda x: int(x.split("_")[-1].split(".")[0]))
            # T2I-CompBench's BLIP_vqa.py sorts by the trailing number and reads the prompt up to the first "_"
            assert [n.split("_")[0] for n in names] == [p for p, _ in prompts for _ in (0, 1)]
            assert names[0] == f"{prompts[0][0]}_000000.png"

    hps, target = runs / "hpsv2.json", tmp_path / "hpsv2"
    assert _eval(fixtures["hpsv2.json"], hps, "--export", "hpsv2", str(target)) == 0
    # HPSv2's BenchmarkDataset opens <style>/<i:05d>.jpg for the i-th prompt of the style; one image per prompt,
    # so each seed is its own folder
    expected = {"headhunter-benchmark.json"} | {
        f"{s}-s{seed}/{style}/{i:05d}.jpg" for s in ("base", "hh") for seed in (0, 1)
        for style, prompts in HPSV2.items() for i in range(len(prompts))}
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == expected
    with Image.open(target / "hh-s1/anime/00001.jpg") as jpg:  # the JPEG of its own image, not of another one
        assert jpg.format == "JPEG"
        errors = {f"{png.parent.name}/{png.name}": np.abs(np.asarray(jpg, int)
                                                          - np.asarray(Image.open(png).convert("RGB"), int)).mean()
                  for png in (hps / "images").glob("*/*.png")}
        assert len(errors) == 12 and min(errors, key=errors.get) == "hh/001-s1.png", errors

    # one seed now: the per-seed folders of the earlier export are removed, not left to be read as this run's
    assert main(["eval", "--prompts", str(fixtures["hpsv2.json"]), "--seeds", "0", "--metrics", "colorfulness",
                 "--out", str(hps), "--steps", "1", "--size", "32", "--setting", "base:",
                 "--export", "hpsv2", str(target)]) == 0
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == {
        "headhunter-benchmark.json", "base/anime/00000.jpg", "base/anime/00001.jpg", "base/photo/00000.jpg"}


@pytest.mark.parametrize("kind, prompt_file, message", [
    ("geneval", "drawbench.csv", "prompt 1 has no GenEval metadata"),
    ("hpsv2", "drawbench.csv", "prompt 1 has style 'Colors'"),
    ("t2i-compbench", "underscore.txt", "holds '_'"),
    ("t2i-compbench", "traversal.csv", "category '../../escape' cannot be a folder name"),
    ("t2i-compbench", "foreign", "is not empty and holds no earlier t2i-compbench export"),
    ("coco", "drawbench.csv", "unknown benchmark 'coco'"),
])
def test_a_bad_export_exits_2_before_any_image(fixtures, tmp_path, capsys, kind, prompt_file, message):
    (tmp_path / "underscore.txt").write_text("a snake_case sign\n")
    (tmp_path / "traversal.csv").write_text("Prompts,Category\na cat,../../escape\n")
    target = tmp_path / "target"
    prompts = fixtures.get(prompt_file, tmp_path / prompt_file)
    if prompt_file == "foreign":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        prompts = fixtures["drawbench.csv"]
    assert _eval(prompts, tmp_path / "run", "--export", kind, str(target)) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("images/*/*.png"))
    if prompt_file == "foreign":
        assert (target / "notes.txt").read_text() == "mine"
