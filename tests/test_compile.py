"""torch.compile with head perturbation: every way diffusers users compile, fullgraph, no graph break, outputs equal
to eager, and a search whose heads change every call does not recompile every call.

Graphs are counted with a backend that records each graph it is handed (and runs it as the eager backend does), so
the count is what torch.compile really compiled. CI uses this backend; one inductor run is marked slow.
"""

import tempfile

import pytest
import torch
from torch._dynamo.utils import counters

from headhunter.search import HeadHunter
from headhunter.testing import tiny_pipeline


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # compiled code is cached per code object, across model instances: start every test from nothing
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingBackend:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _kwargs(model):
    kw = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    if "flux" in model or "chroma" in model:
        kw["max_sequence_length"] = 48
    if "flux" not in model:
        kw["guidance_scale"] = 1.0  # CFG off (FLUX's guidance_scale is its distilled guidance: left as is)
    return kw


def _compile(pipe, how, backend):
    if how == "in-place":
        pipe.transformer.compile(backend=backend, fullgraph=True)
    elif how == "assigned":
        pipe.transformer = torch.compile(pipe.transformer, backend=backend, fullgraph=True)
    elif how == "repeated-blocks":
        pipe.transformer.compile_repeated_blocks(backend=backend, fullgraph=True)
    elif how == "each-block":  # what compile_repeated_blocks does, for SD3, which diffusers does not list
        for block in pipe.transformer.transformer_blocks:
            block.compile(backend=backend, fullgraph=True)
    else:
        raise AssertionError(how)


CASES = [
    ("tiny-sd3", "in-place"), ("tiny-sd3", "assigned"), ("tiny-sd3", "each-block"),
    ("tiny-flux", "in-place"), ("tiny-flux", "assigned"), ("tiny-flux", "repeated-blocks"),
    ("tiny-chroma", "in-place"), ("tiny-chroma", "repeated-blocks"),
]
HEADS = {"tiny-sd3": ["L1H0,L2H1@0.5", "L1H3,L2", "L0H1,L2"], "tiny-flux": ["L1H0,L3H1@0.5", "L1H1,L2", "L0H1,L3"]}
HEADS["tiny-chroma"] = HEADS["tiny-flux"]


@pytest.mark.parametrize("model,how", CASES, ids=[f"{m}-{h}" for m, h in CASES])
def test_compiled_perturbation_equals_eager_without_graph_breaks(model, how):
    pipe = tiny_pipeline(model)
    kw = _kwargs(model)
    calls = [dict(pag_heads=HEADS[model][0]), dict(pag_heads=HEADS[model][1], pag_scale=5.0),
             dict(pag_heads=HEADS[model][2]), {}, dict(pag_heads=HEADS[model][0], pag_interval=(0.5, 1.0))]
    generate = lambda c: pipe("a red fox", generator=torch.Generator().manual_seed(0), **c, **kw).images  # noqa: E731
    eager = [generate(c) for c in calls]
    backend = CountingBackend()
    _compile(pipe, how, backend)
    counters.clear()
    graphs = []
    for call, reference in zip(calls, eager):
        out = generate(call)
        assert abs(out - reference).max() <= 1e-5, call
        graphs.append(backend.graphs)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert graphs[0] >= 1
    # the second call changes heads, u and w but not the fork layer: nothing is compiled for it
    assert graphs[1] == graphs[0], graphs


@pytest.mark.parametrize("target,scope", [("uniform", "joint"), ("query_mean", "joint"), ("max", "joint"),
                                          ("identity", "image")])
def test_compiled_targets_equal_eager(target, scope):
    pipe = tiny_pipeline("tiny-sd3")
    kw = dict(_kwargs("tiny-sd3"), pag_heads="L1H0,L2H1@0.5", pag_target=target, pag_scope=scope)
    reference = pipe("a red fox", generator=torch.Generator().manual_seed(0), **kw).images
    _compile(pipe, "in-place", CountingBackend())
    counters.clear()
    out = pipe("a red fox", generator=torch.Generator().manual_seed(0), **kw).images
    assert abs(out - reference).max() <= 1e-5
    assert sum(counters["graph_break"].values()) == 0


def _search(pipe, candidates):
    return HeadHunter(pipe, "brightness", ["a red fox", "an old lighthouse"], [0], top_k=2, rounds=1,
                      run_dir=tempfile.mkdtemp(), candidates=candidates, batch_size=8, progress=False,
                      num_inference_steps=2, height=32, width=32).run()


@pytest.mark.parametrize("how", ["in-place", "each-block"])
def test_a_greedy_round_compiles_a_constant_number_of_graphs(how):
    # 4 layers × 12 heads = 48 candidates; a round scores each on 2 prompts, 8 images per call: 12 calls, with
    # head plans that differ in every call and batches that start at every layer
    reference = _search(tiny_pipeline("tiny-sd3", num_layers=4, num_heads=12), "L0-3")
    counts = {}
    for candidates in ("L0-1", "L0-3"):
        torch._dynamo.reset()
        pipe = tiny_pipeline("tiny-sd3", num_layers=4, num_heads=12)
        backend = CountingBackend()
        _compile(pipe, how, backend)
        result = _search(pipe, candidates)
        counts[candidates] = backend.graphs
    assert result.images_generated == 96
    assert str(result.selected) == str(reference.selected)
    for ours, theirs in zip(result.rounds[0].rows, reference.rounds[0].rows):
        assert ours["head"] == theirs["head"] and ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    # twice the candidates, the same graphs
    assert counts["L0-3"] == counts["L0-1"] <= 6, counts
    if how == "in-place":  # every batch forks at layer 0: 12 calls × 2 steps × (8 + 8 rows) × 4 blocks
        assert result.block_evaluations == 12 * 2 * 16 * 4
    else:  # blocks compiled on their own keep each batch's own fork, as eager does
        assert result.block_evaluations == reference.block_evaluations
    print(f"graphs compiled over a 48-candidate greedy round ({how}): {counts['L0-3']}")


@pytest.mark.slow
def test_inductor_compiled_perturbation_equals_eager():
    pipe = tiny_pipeline("tiny-sd3")
    kw = dict(_kwargs("tiny-sd3"), pag_heads="L1H0,L2H1@0.5", pag_target="query_mean")
    reference = pipe("a red fox", generator=torch.Generator().manual_seed(0), **kw).images
    pipe.transformer.compile(fullgraph=True)
    out = pipe("a red fox", generator=torch.Generator().manual_seed(0), **kw).images
    assert abs(out - reference).max() <= 1e-5
