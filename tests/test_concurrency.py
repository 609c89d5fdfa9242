"""Two threads on one pipeline (the usual server pattern): each gets the images of its own single call, because a
call waits for the one already running on the same transformer."""

import threading
import time

import numpy as np
import torch

from headhunter.testing import tiny_pipeline

KW = dict(num_inference_steps=3, height=32, width=32, guidance_scale=1.0, pag_scale=3.0, output_type="np")


def _slow_step(pipe, step, timestep, tensors):
    time.sleep(0.05)  # long steps: without the lock the two calls would interleave inside each other's loops
    return tensors


def test_two_threads_with_different_heads_get_their_single_call_images():
    pipe = tiny_pipeline("tiny-sd3")
    jobs = {"a": ("a red fox", "L0H1,L1", 0), "b": ("an old lighthouse", "L2H3@0.5,L0H0", 1)}
    reference = {name: pipe(prompt, pag_heads=heads, generator=torch.Generator().manual_seed(seed), **KW).images
                 for name, (prompt, heads, seed) in jobs.items()}
    results, errors = {}, []
    start = threading.Barrier(len(jobs))

    def worker(name):
        prompt, heads, seed = jobs[name]
        try:
            start.wait()
            results[name] = pipe(prompt, pag_heads=heads, generator=torch.Generator().manual_seed(seed),
                                 callback_on_step_end=_slow_step, **KW).images
        except Exception as err:  # surfaced below
            errors.append(err)

    for _ in range(3):
        threads = [threading.Thread(target=worker, args=(name,)) for name in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        for name in jobs:
            np.testing.assert_array_equal(results[name], reference[name])
    assert not reference["a"].tobytes() == reference["b"].tobytes()
    assert dict(pipe.transformer.attn_processors).keys() and all(
        type(p).__name__ != "SoftPAGProcessor" for p in pipe.transformer.attn_processors.values())
