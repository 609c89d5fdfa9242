"""The pipelines' ``__call__`` bodies follow their diffusers parents line for line, HeadHunter's marked additions
aside; when diffusers changes a parent, this fails with a readable diff (``python -m headhunter.pipelines._copies``
prints the same)."""

import inspect

import pytest

from headhunter.pipelines._copies import check_copy, copies


def _sources(name):
    ours, parent = copies()[name]
    return inspect.getsource(inspect.unwrap(ours)), inspect.getsource(inspect.unwrap(parent))


@pytest.mark.parametrize("name", ["HeadHunterSD3Pipeline.__call__", "HeadHunterFluxPipeline.__call__",
                                  "HeadHunterChromaPipeline.__call__"])
def test_pipelines_follow_their_parents(name):
    ours, parent = _sources(name)
    diff = check_copy(ours, parent, name)
    assert diff == "", f"{name} no longer follows diffusers:\n{diff}"


@pytest.mark.parametrize(
    "name,line",
    [
        # a line outside HeadHunter's additions
        ("HeadHunterSD3Pipeline.__call__", "latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]"),
        # a parent line that an addition replaces (kept there as a #| comment)
        ("HeadHunterSD3Pipeline.__call__", "noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)"),
        # the FLUX stock step, which HeadHunter indents under `else:`
        ("HeadHunterFluxPipeline.__call__", "noise_pred = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)"),
    ],
)
def test_a_change_in_the_parent_is_reported(name, line):
    ours, parent = _sources(name)
    assert parent.count(line) == 1
    changed = parent.replace(line, line + "  # changed upstream")
    diff = check_copy(ours, changed, name)
    assert f"-{line}  # changed upstream" in diff and f"+{line}" in diff
    removed = "\n".join(row for row in parent.splitlines() if row.strip() != line)
    assert f"+{line}" in check_copy(ours, removed, name)
