"""What the HeadHunter pipelines add to their diffusers parents, in one place (in the spirit of diffusers' PAGMixin)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

from headhunter.arguments import PAGArguments
from headhunter.attention import PerturbationPlan, build_plan, perturbed_heads
from headhunter.attention.perturb import perturbation
from headhunter.heads import HeadLayout


class HeadHunterMixin:
    """Head layout, ``pag_*`` validation and the per-call perturbation plan.

    Attributes:
        share_prefix (`bool` or `int`, defaults to `True`):
            Run the blocks before the first perturbed layer once for the conditional and the perturbed branch, and
            fork the branch there. `False` runs the branch through every block (same result, more work); kept for
            benchmarks and checks. An int `n` forks at layer `n` (or earlier, where the heads start earlier): a
            transformer compiled as a whole compiles one graph per fork layer, so a fixed fork keeps it on one graph
            while the heads change (the search does this).
    """

    share_prefix: bool | int = True

    @property
    def head_layout(self) -> HeadLayout:
        """Layers and heads of this pipeline's transformer."""
        return HeadLayout.from_transformer(self.transformer)

    def check_pag_inputs(self, batch_size: int, num_images_per_prompt: int, **pag_kwargs: Any) -> PAGArguments:
        """Validate the ``pag_*`` arguments of a call before anything runs (ValueError naming the problem). An
        IP-Adapter combines with them: the perturbed rows forked inside the transformer get the image embeddings of
        the conditional rows they copy."""
        return PAGArguments.from_call(
            self.head_layout, num_prompts=batch_size, num_images_per_prompt=num_images_per_prompt, **pag_kwargs
        )

    def prepare_perturbation_plan(
        self, pag: PAGArguments, do_classifier_free_guidance: bool, text_len: int, device: Any = "cpu"
    ) -> PerturbationPlan | None:
        """The plan for this call (its tensors on ``device``), or None when no perturbed rows are forked: the branch
        never runs, or ``pag_mode="uncond"`` perturbs the unconditional rows in place (ValueError without CFG)."""
        pag.check_classifier_free_guidance(do_classifier_free_guidance)
        if not pag.active or pag.pag_mode == "uncond":
            return None
        return build_plan(
            self.head_layout,
            pag.softness,
            do_classifier_free_guidance=do_classifier_free_guidance,
            target=pag.pag_target,
            scope=pag.pag_scope,
            share_prefix=self.share_prefix,
            text_len=text_len,
            device=device,
        )

    def perturbation_session(
        self, pag: PAGArguments, plan: PerturbationPlan | None, text_len: int
    ) -> ContextManager[Any]:
        """What the denoising loop runs inside (switched per step with ``session.active``): the plan's processors and
        fork hooks; for ``pag_mode="uncond"`` the perturbation of the unconditional rows of the batch
        ``[uncond, cond]`` in place (the conditional rows carry no heads); else nothing (``None``)."""
        if plan is not None:
            return perturbed_heads(self.transformer, plan, active=False)
        if pag.active and pag.pag_mode == "uncond":
            rows = [*pag.softness, *({} for _ in pag.softness)]
            return perturbation(self.transformer, rows, target=pag.pag_target, scope=pag.pag_scope, text_len=text_len)
        return nullcontext()
