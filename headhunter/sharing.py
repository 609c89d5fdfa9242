"""A search's result as a folder anyone can load: :func:`export_run` writes it (``headhunter export RUN_DIR OUT``),
:func:`push_export` uploads it to the Hugging Face Hub, and ``HeadHunterGuidance.from_pretrained(OUT)`` or
``pag_heads=OUT`` read it back, from the folder or from the Hub (``"user/repo"`` for the guider, ``"hf://user/repo"``
as ``pag_heads``; offline once it is in the hub cache).

    OUT/guider_config.json   HeadHunterGuidance's config: heads, PAG scale, softness, target, scope, interval, reuse,
                             and the layout the heads were searched on (``made_for``)
    OUT/headhunter.json      the provenance: model, family and layout, objective, prompts and seeds, the search's
                             settings, library versions, every round's ranking, the selected heads
    OUT/README.md            the model card the Hub shows
    OUT/heatmap.png          the last round's heat map
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .heads import HeadLayout, HeadSet, load_preset

__all__ = ["EXPORT_FORMAT", "HUB_PREFIX", "PROVENANCE_NAME", "export_folder", "export_run", "is_export", "layout_signature",
           "load_export", "push_export"]

EXPORT_FORMAT = "headhunter.export/1"
PROVENANCE_NAME = "headhunter.json"
GUIDER_CONFIG_NAME = "guider_config.json"
HUB_PREFIX = "hf://"


def layout_signature(layout: HeadLayout) -> str:
    """What a head set's numbers mean: the transformer type and its layers × heads (``"sd3:24x24"``)."""
    return f"{layout.model_type}:{layout.num_layers}x{layout.num_heads}"


def _model_type(family: str) -> str:
    """A preset family's transformer type: ``tiny-sd3`` → ``sd3``; the toy models are SD3 transformers."""
    from .testbed import TOY_MODELS

    return "sd3" if family in TOY_MODELS else family.removeprefix("tiny-")


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a finished search run (``run_dir``, with its ``selected.json`` and ``summary.json``) as a shareable folder
    ``out``. ValueError for an unfinished run, or an ``out`` that exists and is not empty (unless ``overwrite``)."""
    from . import __version__
    from .guiders import HeadHunterGuidance
    from .search.config import SearchConfig

    run_dir, out = Path(run_dir), Path(out)
    try:
        config = SearchConfig.from_json(json.loads((run_dir / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{run_dir} is not a headhunter search run ({err})") from None
    if not (run_dir / "summary.json").is_file() or not (run_dir / "selected.json").is_file():
        raise ValueError(f"{run_dir} has not finished: resume it first (the same `headhunter search` command)")
    preset = load_preset(run_dir / "selected.json")
    summary = json.loads((run_dir / "summary.json").read_text())
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")
    family = preset.get("family") or config.model
    made_for = f"{_model_type(family)}:{config.layout[0]}x{config.layout[1]}"
    extra = {key: value for key, value in config.extra.items()}
    out.mkdir(parents=True, exist_ok=True)
    guider = HeadHunterGuidance(heads=str(preset["heads"]), pag_scale=config.pag_scale,
                                pag_softness=config.pag_softness, pag_target=config.pag_target,
                                pag_scope=config.pag_scope, made_for=made_for,
                                **({"pag_reuse": int(extra["pag_reuse"])} if "pag_reuse" in extra else {}))
    guider.save_pretrained(out)
    heatmaps = sorted((run_dir / "heatmaps").glob("round-*.png"))
    if heatmaps:
        shutil.copyfile(heatmaps[-1], out / "heatmap.png")
    provenance = {
        "format": EXPORT_FORMAT, "heads": str(preset["heads"]), "model": config.model, "family": family,
        "made_for": made_for, "objective": config.objective, "strategy": config.strategy, "top_k": config.top_k,
        "rounds": config.rounds, "prompts": list(dict.fromkeys(p for p, _ in config.pairs)),
        "seeds": list(dict.fromkeys(s for _, s in config.pairs)), "pairs": [list(pair) for pair in config.pairs],
        "search": {key: value for key, value in config.to_json().items()
                   if key not in ("model", "layout", "objective", "pairs", "candidates", "environment")},
        "environment": config.environment, "exported_with": {"headhunter": __version__},
        "ranking": summary.get("rounds", []), "images_generated": summary.get("images_generated"),
        "source": preset.get("source", ""),
    }
    (out / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2) + "\n")
    (out / "README.md").write_text(model_card(provenance, guider.config, heatmap=bool(heatmaps)))
    return out


def model_card(provenance: dict[str, Any], guider_config: Any, heatmap: bool = True) -> str:
    """The folder's ``README.md``: Hub metadata, how to load the heads, and every field of the provenance."""
    search = provenance["search"]
    lines = [
        "---", "library_name: headhunter", "tags:", "- headhunter", "- perturbed-attention-guidance",
        f"- {provenance['family']}", f"base_model: {provenance['model']}" if "/" in provenance["model"] else None, "---",
        "", f"# Heads for `{provenance['objective']}` on {provenance['model']}", "",
        f"Attention heads found by a HeadHunter search ({provenance['strategy']}, top {provenance['top_k']} × "
        f"{provenance['rounds']} rounds): **{provenance['heads']}**, for the {provenance['family']} family "
        f"({provenance['made_for']}: type, layers × heads).", "",
        "```python", "from headhunter.guiders import HeadHunterGuidance", "",
        "guider = HeadHunterGuidance.from_pretrained(\"<this repo or folder>\")",
        "# or, with headhunter's pipelines: pipe(prompt, pag_heads=\"hf://<this repo>\")", "```", "",
        "## The search", "",
        "| field | value |", "|---|---|",
        f"| model | {provenance['model']} |", f"| family | {provenance['family']} |",
        f"| layout | {provenance['made_for']} |", f"| objective | {provenance['objective']} |",
        f"| strategy | {provenance['strategy']}, k = {provenance['top_k']}, rounds = {provenance['rounds']} |",
        f"| prompts | {'; '.join(provenance['prompts'])} |", f"| seeds | {', '.join(map(str, provenance['seeds']))} |",
        *(f"| {key} | {value} |" for key, value in search.items()),
        *(f"| {name} version | {version} |" for name, version in provenance["environment"].items()),
        f"| images generated | {provenance['images_generated']} |", f"| run | {provenance['source']} |", "",
        "## Guider settings (`guider_config.json`)", "",
        "| setting | value |", "|---|---|",
        *(f"| {key} | {value} |" for key, value in dict(guider_config).items() if not key.startswith("_")), "",
    ]
    for entry in provenance["ranking"]:
        lines += [f"## Round {entry.get('round', 0)}: selected {', '.join(entry.get('selected', []))}", "",
                  "| rank | head | score | pairs |", "|---|---|---|---|",
                  *(f"| {row['rank']} | {row['head']} | {row['score']:.6g} | {row['pairs']} |"
                    for row in entry.get("top", [])), ""]
    if heatmap:
        lines += ["## Heat map of the last round (layers × heads)", "", "![heat map](heatmap.png)", ""]
    return "\n".join(line for line in lines if line is not None)


def push_export(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                api: Any = None) -> str:
    """Upload an exported folder to the Hub as the model repo ``repo_id`` (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / PROVENANCE_NAME).is_file():
        raise ValueError(f"{folder} is not a headhunter export (no {PROVENANCE_NAME}); run `headhunter export` first")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message="headhunter export")
    return f"https://huggingface.co/{repo_id}"


def is_export(source: Any) -> bool:
    """Whether ``source`` names an exported folder: ``hf://user/repo``, or a folder holding ``headhunter.json``."""
    if not isinstance(source, (str, Path)):
        return False
    if str(source).startswith(HUB_PREFIX):
        return True
    return (Path(source) / PROVENANCE_NAME).is_file()


def export_folder(source: str | Path) -> Path:
    """The local folder of an export: ``source`` itself, or for ``hf://user/repo[@revision]`` its snapshot in the
    hub cache (downloaded unless ``HF_HUB_OFFLINE`` is set; then it must be cached)."""
    text = str(source)
    if not text.startswith(HUB_PREFIX):
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = text[len(HUB_PREFIX):].partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None,
                                      allow_patterns=[PROVENANCE_NAME, GUIDER_CONFIG_NAME]))
    except LocalEntryNotFoundError:
        raise ValueError(f"{text} is not in the hub cache and the hub cannot be reached (offline)") from None


def load_export(source: str | Path) -> dict[str, Any]:
    """An export as a preset: its provenance's fields, ``heads`` as a :class:`HeadSet`, and the guider settings
    (``pag_scale``, ``pag_softness``, ...)."""
    folder = export_folder(source)
    try:
        provenance = json.loads((folder / PROVENANCE_NAME).read_text())
        guider = json.loads((folder / GUIDER_CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{source} is not a headhunter export ({err})") from None
    if provenance.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{source} is not a headhunter export (format {provenance.get('format')!r})")
    return {**provenance, "heads": HeadSet.parse(guider["heads"]), "pag_scale": guider.get("pag_scale", 3.0),
            "pag_softness": guider.get("pag_softness", 1.0), "guider": guider}


def check_made_for(made_for: str | None, layout: HeadLayout, where: str) -> None:
    """ValueError when heads searched on a ``made_for`` layout are used on a transformer with another one."""
    if made_for and made_for != layout_signature(layout):
        raise ValueError(
            f"{where} holds heads searched on a {made_for} transformer (type:layers x heads); this one is "
            f"{layout_signature(layout)}: head numbers do not carry over. To use them anyway, pass the heads "
            "themselves (load_export(...)['heads'], or made_for=None to HeadHunterGuidance)")
