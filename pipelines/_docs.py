"""Docstring text for the ``pag_*`` arguments, shared by both pipelines so the two never drift apart."""

PAG_ARGS_DOC = """
            pag_heads (`HeadSet`, `str`, `list`, `dict` or `None`, defaults to `None`):
                The attention heads to perturb: a `headhunter.HeadSet`, a spec such as `"L13H17,L1H10@0.5"`, a shipped
                preset name (`"sd3-shadow"`), a preset JSON path (e.g. a search's `selected.json`), a list of
                `(layer, head)` tuples or a `{(layer, head): softness}` dict. A list with one of those per generated
                image (or per prompt) gives every image its own heads, all in one batched call. `None` or empty: no
                perturbed branch is computed at all.
            pag_scale (`float`, defaults to 3.0):
                Perturbation-guidance scale w in `v = v_cond + w * (v_cond - v_perturbed)`. 0 disables the branch.
            pag_softness (`float`, defaults to 1.0):
                Softness u in [0, 1] for heads without their own `@u`: the head's attention becomes
                `(1 - u) * A + u * T`. 1 is full PAG on that head, 0 leaves it untouched.
            pag_target (`str`, defaults to `"identity"`):
                The map T: `"identity"` (SoftPAG), `"uniform"`, `"query_mean"` (SoftSEG limit) or `"max"`.
            pag_scope (`str`, defaults to `"joint"`):
                `"joint"`: T spans the layer's whole joint sequence, text tokens included (the paper). `"image"`
                (identity only): diffusers' SD3 PAG mask, image tokens attend to themselves and all text tokens, text
                rows unchanged.
            pag_interval (`tuple[float, float]`, defaults to `(0.0, 1.0)`):
                Fraction `[start, end)` of the denoising steps in which the perturbed branch runs; outside it the
                branch is not computed.
            pag_adaptive_scale (`float`, defaults to 0.0):
                As diffusers' PAG: `w_t = max(0, pag_scale - pag_adaptive_scale * (1000 - t))`.
            pag_applied_layers (`list[int | str]`, *optional*):
                diffusers-compatible layer list (`[7, "blocks.8"]`), matched exactly, meaning every head of those
                layers; added to `pag_heads`.
            pag_reuse (`int`, defaults to 1):
                Cheap mode: the perturbed rows run on every k-th guided step only, and the last `v_cond - v_perturbed`
                is reused on the steps between (those cost what an unguided or CFG step costs). 1 is exact. The
                README's "Cheap modes" table gives the measured trade-off (2 keeps the effect; 4 costs shape).
            pag_mode (`str`, defaults to `"cond"`):
                Which prediction carries the perturbation. `"cond"`: a perturbed copy of the conditional prediction
                (the paper; rows of its own). `"uncond"` (needs classifier-free guidance): the unconditional rows are
                perturbed instead, `v = v_uncond_perturbed + g * (v_cond - v_uncond_perturbed)`, so a guided step costs
                exactly CFG's two passes; the perturbation's weight is then `g - 1` and `pag_scale` only switches it
                on (> 0) or off (0).
"""
