"""The search engine: Algorithm 1 (``greedy``) and successive halving (``halving``) over batched, per-sample head plans.

Each evaluation is one image: (round, candidate head, prompt-seed pair) generated with perturbation guidance on the
heads selected so far plus the candidate, scored by the objective. Many evaluations share one pipeline call (one head
plan per image), and the perturbed branch forks from the conditional one at its first perturbed layer.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ..distributed import process_info
from ..guidance import default_cfg_scale
from ..heads import PRESET_FORMAT, Head, HeadLayout, HeadSet, preset_family
from .config import SearchConfig, prompt_seed_pairs, spread_order
from .heatmap import heatmap_image
from .store import RunStore

__all__ = ["HeadHunter", "RoundTable", "SearchCancelled", "SearchResult"]


class SearchCancelled(Exception):
    """Raised by :meth:`HeadHunter.run` when ``should_stop()`` turned true; the run directory stays resumable."""


@dataclass
class RoundTable:
    """One round's scores: ``rows`` are dicts with head, mean score, pairs scored and rank (1 = best), best first."""

    round: int
    rows: list[dict]
    selected: list[str]
    images_generated: int = 0
    block_evaluations: float = 0.0


@dataclass
class SearchResult:
    selected: HeadSet
    rounds: list[RoundTable]
    images_generated: int
    block_evaluations: float
    failed: list[str] = field(default_factory=list)
    run_dir: str = ""

    @property
    def scores(self) -> list[dict[str, float]]:
        """Per round, ``{"L13H17": mean score}``."""
        return [{row["head"]: row["score"] for row in table.rows} for table in self.rounds]


def _head_name(head: tuple[int, int]) -> str:
    return f"L{head[0]}H{head[1]}"


class HeadHunter:
    """Search for the heads that serve ``objective`` (Algorithm 1 of the paper).

    Args:
        pipe: a ``HeadHunterSD3Pipeline`` or ``HeadHunterFluxPipeline``.
        objective: a scorer spec (``"pickscore"``, ``"style:golden hour"``, ...) or a callable
            ``(images [B,3,H,W] in [0,1], prompts) -> Tensor[B]``; higher is better.
        prompts, seeds: every prompt with every seed; with ``seeds=None``, ``prompts`` are ``(prompt, seed)`` pairs.
        top_k: heads added per round (k). rounds: rounds (R).
        run_dir: the run directory; the same directory with the same settings resumes.
        candidates: the heads to search (HeadSet, spec like ``"L0-11"``...); default every head.
        pag_scale, pag_softness, pag_target, pag_scope: the perturbation used while searching (paper: w = 3, u = 1).
        num_inference_steps, height, width, guidance_scale: generation settings (``guidance_scale`` default: 0 for SD3,
            i.e. CFG off as in the paper; FLUX's distilled default 3.5).
        strategy: ``"greedy"`` (every remaining candidate on every pair each round), ``"halving"`` (successive halving
            inside each round: all candidates on ``halving_initial_pairs`` pairs (taken round-robin over prompts, so
            the first stages see several prompts), keep the best ``halving_keep``
            fraction (at least k), double the pairs, until the survivors have every pair) or ``"coarse"`` (greedy,
            with every image at ``coarse_steps`` denoising steps instead of ``num_inference_steps``: rankings hold
            across steps far better than across pairs — see the README's testbed experiments).
        coarse_steps: the coarse strategy's steps (default a fifth of ``num_inference_steps``, at least 2).
        batch_size: images per pipeline call.
        save_images: also write every generated image to ``run_dir/images``.
        model_name: recorded in the config (default: the pipeline's ``name_or_path``).
        scorer_options: passed to ``load_scorer`` for a spec objective.
        progress: show a tqdm progress bar.
        should_stop: called before every batch and between the denoising steps of the batch in flight; when it returns
            True the search stops with :class:`SearchCancelled`; everything scored so far is kept, so the same call
            resumes (the unfinished batch is not logged and runs again).
    """

    def __init__(
        self,
        pipe: Any,
        objective: str | Callable,
        prompts: Sequence[Any],
        seeds: Sequence[int] | None,
        top_k: int,
        rounds: int,
        run_dir: str | os.PathLike,
        candidates: Any = None,
        pag_scale: float = 3.0,
        pag_softness: float = 1.0,
        pag_target: str = "identity",
        pag_scope: str = "joint",
        num_inference_steps: int = 20,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float | None = None,
        strategy: str = "greedy",
        batch_size: int = 8,
        halving_initial_pairs: int = 2,
        halving_keep: float = 0.5,
        coarse_steps: int | None = None,
        save_images: bool = False,
        model_name: str | None = None,
        scorer_options: dict | None = None,
        progress: bool = True,
        extra_call_kwargs: dict | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        from ..arguments import check_image_size
        from ..attention import check_target_scope

        self.pipe = pipe
        self.layout: HeadLayout = pipe.head_layout
        check_target_scope(pag_target, pag_scope)
        if isinstance(objective, str):
            from ..scorers import load_scorer

            self.objective = load_scorer(objective, device=pipe.device, **(scorer_options or {}))
            objective_name = objective
        elif callable(objective):
            self.objective = objective
            objective_name = f"callable:{getattr(objective, '__module__', '')}.{getattr(objective, '__qualname__', repr(objective))}"
        else:
            raise ValueError("objective must be a scorer spec or a callable (images, prompts) -> scores")
        pool = self.layout.all_heads() if candidates is None else HeadSet.coerce(candidates)
        resolved = tuple((h.layer, h.head) for h in pool.resolve(self.layout))
        if guidance_scale is None:  # FLUX.1: its distilled guidance; CFG off as in the paper, but where a model needs it
            guidance_scale = 3.5 if self.layout.model_type == "flux" else default_cfg_scale(self.layout.model_type, 0.0)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if strategy == "coarse" and coarse_steps is None:
            coarse_steps = min(int(num_inference_steps), max(2, round(int(num_inference_steps) / 5)))
        check_image_size(pipe, height, width)
        self.batch_size = batch_size
        self.save_images = save_images
        self.progress = progress
        self.extra_call_kwargs = dict(extra_call_kwargs or {})
        self.should_stop = should_stop
        self.config = SearchConfig(
            model=model_name or str(getattr(pipe, "name_or_path", "") or type(pipe.transformer).__name__),
            layout=(self.layout.num_layers, self.layout.num_heads),
            objective=objective_name,
            pairs=tuple(prompt_seed_pairs(prompts, seeds)),
            candidates=resolved,
            top_k=int(top_k),
            rounds=int(rounds),
            strategy=strategy,
            pag_scale=float(pag_scale),
            pag_softness=float(pag_softness),
            pag_target=pag_target,
            pag_scope=pag_scope,
            num_inference_steps=int(num_inference_steps),
            height=height,
            width=width,
            guidance_scale=float(guidance_scale),
            halving_initial_pairs=int(halving_initial_pairs),
            halving_keep=float(halving_keep),
            coarse_steps=None if coarse_steps is None else int(coarse_steps),
            extra={k: repr(v) for k, v in sorted(self.extra_call_kwargs.items())},
            dtype=str(pipe.transformer.dtype).removeprefix("torch."),
            environment=_environment(pipe),
        )
        self.rank, self.world, self.barrier = process_info()
        self.store = RunStore(run_dir, self.config, self.rank, self.world)
        self._blocks = 0.0

    # --- evaluation ---------------------------------------------------------------------------------------------------
    @contextmanager
    def _count_blocks(self) -> Iterator[None]:
        """Count transformer block evaluations (batch rows through each block) during a pipeline call."""
        transformer = self.pipe.transformer
        blocks = [self.layout.block(transformer, layer) for layer in range(self.layout.num_layers)]

        def hook(module: Any, args: Any, output: Any) -> None:
            # blocks return a tensor or a tuple whose first entry may be None (SD3's last block has no text output)
            rows = next(t for t in (output if isinstance(output, tuple) else (output,)) if torch.is_tensor(t))
            self._blocks += rows.shape[0]

        handles = [block.register_forward_hook(hook) for block in blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def evaluate(self, items: Sequence[tuple[int, tuple[int, int], int]], selected: Sequence[tuple[int, int]]) -> list[float]:
        """Scores of ``(round, candidate, pair index)`` items, each one image with heads ``selected + [candidate]``."""
        cfg = self.config
        prompts = [cfg.pairs[j][0] for _, _, j in items]
        device = "cpu" if self.pipe.device.type == "cpu" else self.pipe.device
        generators = [torch.Generator(device=device).manual_seed(cfg.pairs[j][1]) for _, _, j in items]
        plans = [HeadSet([Head(l, h) for l, h in [*selected, cand]]) for _, cand, _ in items]
        before = self._blocks
        stopping = {}
        if self.should_stop is not None:  # Stop ends the batch in flight too: it is not logged, so it reruns on resume
            def stop_between_steps(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
                if self.should_stop():
                    raise SearchCancelled(f"search stopped at step {step + 1}; run it again with the same settings "
                                          f"to resume ({self.store.dir})")
                return {}

            stopping["callback_on_step_end"] = stop_between_steps
        with self._count_blocks():
            images = self.pipe(
                prompts,
                generator=generators,
                pag_heads=plans,
                pag_scale=cfg.pag_scale,
                pag_softness=cfg.pag_softness,
                pag_target=cfg.pag_target,
                pag_scope=cfg.pag_scope,
                num_inference_steps=cfg.scoring_steps,
                height=cfg.height,
                width=cfg.width,
                guidance_scale=cfg.guidance_scale,
                output_type="pt",
                **stopping,
                **self.extra_call_kwargs,
            ).images
        self._last_batch_blocks = self._blocks - before
        if self.save_images:
            self._save_images(items, images, selected)
        scores = torch.as_tensor(self.objective(images.float().clamp(0, 1), prompts)).detach().float().cpu()
        return [float(s) for s in scores.reshape(-1)]

    def _save_images(self, items: Sequence, images: torch.Tensor, selected: Sequence[tuple[int, int]]) -> None:
        from PIL import Image

        from ..metadata import save_png

        cfg = self.config
        arrays = (images.float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for (r, cand, j), array in zip(items, arrays):
            settings = {
                "model": cfg.model, "prompt": cfg.pairs[j][0], "seed": cfg.pairs[j][1],
                "num_inference_steps": cfg.scoring_steps, "width": cfg.width, "height": cfg.height,
                "guidance_scale": cfg.guidance_scale, "pag_heads": str(HeadSet([Head(l, h) for l, h in [*selected, cand]])),
                "pag_scale": cfg.pag_scale, "pag_softness": cfg.pag_softness, "pag_target": cfg.pag_target,
                "pag_scope": cfg.pag_scope, "search_round": r,
            }
            save_png(Image.fromarray(array), self.store.dir / "images" / f"r{r}-{_head_name(cand)}-p{j}.png", settings)

    def _run_items(self, items: list, selected: list, bar: Any, best: list) -> None:
        """Evaluate this process's share of ``items`` in batches, appending each batch's scores to the log."""
        mine = items[self.rank :: self.world]
        for start in range(0, len(mine), self.batch_size):
            if self.should_stop is not None and self.should_stop():
                raise SearchCancelled(f"search stopped; run it again with the same settings to resume ({self.store.dir})")
            batch = mine[start : start + self.batch_size]
            scores = self.evaluate(batch, selected)
            share = self._last_batch_blocks / len(batch)
            self.store.append(
                {"round": r, "head": list(c), "pair": j, "score": s, "blocks": share} for (r, c, j), s in zip(batch, scores)
            )
            finite = [s for s in scores if math.isfinite(s)]
            if finite and (not best or max(finite) > best[0]):
                best[:] = [max(finite)]
            if bar is not None:
                bar.update(len(batch))
                if best:
                    bar.set_postfix(best=f"{best[0]:.4g}")

    # --- the search ---------------------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        """Run (or resume) the search; returns the selected heads in selection order and the per-round tables."""
        if self.rank == 0:
            self.store.write_config()
        self.barrier()
        try:
            self.store.check_config()
            self.store.repair()
            with self._fixed_fork():
                return self._run()
        except BaseException:
            if self.rank == 0:
                self.store.discard_if_empty()
            raise

    @contextmanager
    def _fixed_fork(self) -> Iterator[None]:
        """A transformer compiled as a whole compiles one graph per fork layer; every batch of the search forks at
        the candidates' first layer instead of its own, so the graph count stays constant (blocks compiled on their
        own, or an eager transformer, keep the per-batch fork and its saving)."""
        from ..attention import compile_mode

        if compile_mode(self.pipe.transformer) != "whole":
            yield
            return
        before = self.pipe.share_prefix
        self.pipe.share_prefix = min(layer for layer, _ in self.config.candidates)
        try:
            yield
        finally:
            self.pipe.share_prefix = before

    def _run(self) -> SearchResult:
        cfg = self.config
        selected: list[tuple[int, int]] = []
        tables: list[RoundTable] = []
        failed: set[str] = set()
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=0, unit="img", desc="HeadHunter", dynamic_ncols=True)
        best: list[float] = []
        start_time = time.perf_counter()
        try:
            for r in range(cfg.rounds):
                pool = [c for c in cfg.candidates if c not in selected]
                if bar is not None:
                    bar.set_description(f"HeadHunter round {r + 1}/{cfg.rounds}")
                if cfg.strategy == "halving":
                    means, counts = self._halving_round(r, pool, selected, bar, best)
                else:
                    means, counts = self._greedy_round(r, pool, selected, bar, best)
                ranked = sorted(means, key=lambda c: (0, -means[c], cfg.candidates.index(c)) if math.isfinite(means[c])
                                else (1, 0.0, cfg.candidates.index(c)))
                chosen = [c for c in ranked if counts[c] == len(cfg.pairs)][: cfg.top_k]
                failed.update(_head_name(c) for c in means if not math.isfinite(means[c]))
                selected.extend(chosen)
                rows = [{"head": _head_name(c), "score": means[c], "pairs": counts[c], "rank": i + 1}
                        for i, c in enumerate(ranked)]
                tables.append(RoundTable(r, rows, [_head_name(c) for c in chosen]))
                if self.rank == 0:
                    self._write_round(r, rows, means, set(selected))
        finally:
            if bar is not None:
                bar.close()
        records = self.store.load()
        for table in tables:
            in_round = [rec for key, rec in records.items() if key[0] == table.round]
            table.images_generated = len(in_round)
            table.block_evaluations = sum(rec.get("blocks", 0.0) for rec in in_round)
        result = SearchResult(
            selected=HeadSet([Head(l, h) for l, h in selected]),
            rounds=tables,
            images_generated=len(records),
            block_evaluations=sum(rec.get("blocks", 0.0) for rec in records.values()),
            failed=sorted(failed),
            run_dir=str(self.store.dir),
        )
        if self.rank == 0:
            self._write_summary(result, time.perf_counter() - start_time)
        self.barrier()
        return result

    def _scores_for(self, r: int, pool: Sequence, pairs: Sequence[int], selected: list, bar: Any, best: list):
        """Make sure every (candidate, pair in ``pairs``) of round r is scored; return mean scores and counts."""
        # Every process must split the same work list: read the logs only when all have stopped writing, and start
        # writing only when all have read.
        self.barrier()
        done = self.store.load()
        self.barrier()
        todo = [(r, c, j) for c in pool for j in pairs if (r, c[0], c[1], j) not in done]
        if bar is not None:
            bar.total += len(todo[self.rank :: self.world])
            bar.refresh()
        self._run_items(todo, selected, bar, best)
        self.barrier()
        done = self.store.load()
        means, counts = {}, {}
        for c in pool:
            values = [done[(r, c[0], c[1], j)]["score"] for j in pairs]
            values = [float("nan") if v is None else v for v in values]
            means[c] = sum(values) / len(values)  # NaN if the objective failed on any pair
            counts[c] = len(pairs)
        return means, counts

    def _greedy_round(self, r: int, pool: list, selected: list, bar: Any, best: list):
        return self._scores_for(r, pool, range(len(self.config.pairs)), selected, bar, best)

    def _halving_round(self, r: int, pool: list, selected: list, bar: Any, best: list):
        cfg = self.config
        total = len(cfg.pairs)
        order = spread_order(cfg.pairs)  # early stages see many prompts, not the first prompt's seeds
        pairs = min(cfg.halving_initial_pairs, total)
        survivors = list(pool)
        means_all, counts_all = {}, {}
        while True:
            means, counts = self._scores_for(r, survivors, order[:pairs], selected, bar, best)
            means_all.update(means)
            counts_all.update(counts)
            if pairs >= total:
                break
            keep = max(cfg.top_k, math.ceil(len(survivors) * cfg.halving_keep))
            survivors = sorted(survivors, key=lambda c: (0, -means[c], cfg.candidates.index(c)) if math.isfinite(means[c])
                               else (1, 0.0, cfg.candidates.index(c)))[:keep]
            pairs = min(total, pairs * 2)
        return means_all, counts_all

    # --- outputs ------------------------------------------------------------------------------------------------------
    def _write_round(self, r: int, rows: list[dict], means: dict, selected: set) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["rank", "head", "score", "pairs"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in ("rank", "head", "score", "pairs")})
        self.store.write_text(f"rankings/round-{r}.csv", buffer.getvalue())
        image = heatmap_image(means, self.layout.num_layers, self.layout.num_heads, selected)
        path = self.store.dir / "heatmaps" / f"round-{r}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)

    def _write_summary(self, result: SearchResult, seconds: float) -> None:
        cfg = self.config
        preset = {
            "format": PRESET_FORMAT,
            "model": cfg.model,
            "family": preset_family(cfg.model, self.layout),
            "heads": str(result.selected),
            "pag_scale": cfg.pag_scale,
            "pag_softness": cfg.pag_softness,
            "description": f"HeadHunter {cfg.strategy} search for {cfg.objective!r}: top {cfg.top_k} × {cfg.rounds} rounds",
            "source": f"headhunter search, run {cfg.fingerprint()}",
        }
        self.store.write_text("selected.json", json.dumps(preset, indent=2) + "\n")
        summary = {
            "selected": [_head_name((h.layer, h.head)) for h in result.selected],
            "rounds": [{"round": t.round, "selected": t.selected, "images_generated": t.images_generated,
                        "block_evaluations": t.block_evaluations, "top": t.rows[: max(5, cfg.top_k)]}
                       for t in result.rounds],
            "images_generated": result.images_generated,
            "block_evaluations": result.block_evaluations,
            "failed_candidates": result.failed,
            "seconds_this_invocation": round(seconds, 3),
            "config_fingerprint": cfg.fingerprint(),
        }
        self.store.write_text("summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")


def _environment(pipe: Any) -> dict[str, str]:
    import diffusers

    from .. import __version__

    return {"device_type": pipe.device.type, "headhunter": __version__, "diffusers": diffusers.__version__,
            "torch": torch.__version__}


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(type(value).__name__)
