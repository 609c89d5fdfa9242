"""Nothing left behind: a fault inside a guided call — a RuntimeError (an out-of-memory error, a bug) or a
KeyboardInterrupt (Ctrl-C) — (a) in the first perturbed layer, (b) at the fork, (c) in a later step, (d) in the VAE
decode, on every path (the SD3, FLUX.1 and Chroma pipelines, the guider on the FLUX.2, Qwen-Image and Z-Image modular
pipelines, ``perturb()`` on every model class, the search, the studio's generate). After each: nothing of headhunter
is installed (:func:`headhunter.installed`), diffusers' module globals are its own functions, another thread takes the
transformer at once, and the next call equals the same call made in a fresh process, bit for bit.

Where a path has no fork or no decode: (b) is the first perturbed block of the perturbed pass, and (d) for
``perturb()`` is the body of the ``with`` block after its forwards."""

import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fault_cases import targets

import diffusers.models.attention_dispatch as attention_dispatch
import headhunter
from headhunter.attention import PerturbationSession, SoftPAGProcessor
from headhunter.heads import HeadLayout
from headhunter.locking import holding_transformer

pytest.importorskip("gradio", reason="the studio's generate is part of the matrix")

EXCEPTIONS = {"error": RuntimeError, "ctrl-c": KeyboardInterrupt}
POINTS = ("layer", "fork", "step", "decode")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Every call of the matrix, made once in a fresh process."""
    out = tmp_path_factory.mktemp("reference") / "reference.pt"
    subprocess.run([sys.executable, str(Path(__file__).with_name("fault_cases.py")), str(out)], check=True,
                   capture_output=True, timeout=600)
    return torch.load(out, weights_only=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    made = {}
    makers = targets(tmp_path_factory.mktemp("targets"))

    def get(name):
        if name not in made:
            made[name] = makers[name]()
        return made[name]

    return get


def _perturbing(attn, args, kwargs) -> bool:
    """Whether this call of ``attn`` computes perturbed rows (in this thread)."""
    processor = attn.processor
    if not isinstance(processor, SoftPAGProcessor) or processor.u is None or not processor.session.active:
        return False
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    return hidden.shape[0] > processor.session.base_rows


@contextmanager
def fault(target, point, exception, monkeypatch):
    """Raise ``exception`` at ``point`` of the target's next call."""
    layout = HeadLayout.from_transformer(target.transformer)
    attention = layout.attention(target.transformer, target.first_layer)
    seen = []

    def raise_(where):
        raise exception(f"injected fault: {where}")

    handles = []
    if point in ("layer", "step"):
        occurrence = 1 if point == "layer" else 2

        def in_layer(module, args, kwargs):
            if _perturbing(module, args, kwargs):
                seen.append(1)
                if len(seen) == occurrence:
                    raise_(f"{point} L{target.first_layer}")

        handles.append(attention.register_forward_pre_hook(in_layer, with_kwargs=True))
    elif point == "fork" and target.forks:
        fork = PerturbationSession.fork

        def forking(session, x):
            if session.active and isinstance(x, torch.Tensor) and x.shape[0] == session.base_rows:
                raise_("fork")
            return fork(session, x)

        monkeypatch.setattr(PerturbationSession, "fork", forking)
    elif point == "fork":  # no fork on this path: the first perturbed block of the perturbed pass

        def in_block(module, args):
            processor = attention.processor
            if isinstance(processor, SoftPAGProcessor) and processor.session.active:
                raise_("first perturbed block")

        handles.append(layout.block(target.transformer, target.first_layer).register_forward_pre_hook(in_block))
    elif target.decoder is not None:
        handles.append(target.decoder.register_forward_pre_hook(lambda module, args: raise_("decode")))
    else:  # perturb(): the body of the with block, after its forwards

        def after_forward(module, args, output):
            seen.append(1)
            if len(seen) == target.steps:
                raise_("body")

        handles.append(target.transformer.register_forward_hook(after_forward))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        monkeypatch.undo()


def _diffusers_globals_are_its_own() -> list[str]:
    original = attention_dispatch.dispatch_attention_fn
    return [name for name, module in list(sys.modules.items())
            if name.startswith("diffusers.") and getattr(module, "dispatch_attention_fn", original) is not original]


def _another_thread_takes(transformer) -> bool:
    taken = threading.Event()

    def take():
        with holding_transformer(transformer):
            taken.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    thread.join(timeout=10)
    return taken.is_set()


NAMES = [*(f"pipeline-{m}" for m in ("sd3", "flux", "chroma")), *(f"guider-{m}" for m in ("flux2", "qwenimage", "zimage")),
         *(f"perturb-{m}" for m in ("sd3", "flux", "chroma", "flux2", "qwenimage", "zimage", "wan")), "search", "studio"]


@pytest.mark.parametrize("kind", EXCEPTIONS)
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("name", NAMES)
def test_a_fault_leaves_nothing_behind(name, point, kind, built, fresh, monkeypatch):
    target = built(name)
    with fault(target, point, EXCEPTIONS[kind], monkeypatch), pytest.raises(EXCEPTIONS[kind], match="injected fault"):
        target.call()
    assert headhunter.installed(target.transformer) == []
    assert _diffusers_globals_are_its_own() == []
    assert _another_thread_takes(target.transformer)
    assert torch.equal(target.call(), fresh[name])
