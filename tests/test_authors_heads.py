"""The HeadHunter reference implementation's selected-heads files read as head sets: its text file and its pickle (a
list of (layer, head) tuples) in its own layout, written here as its save_final_heads writes them; a pickle that would
run code is refused without running it."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from headhunter.heads import HeadSet, load_preset
from headhunter.testing import tiny_pipeline

# Selection order as the authors' script keeps it; layers and heads count from 0 there as here.
SELECTED = [(2, 3), (0, 1), (1, 0)]


def _authors_files(folder: Path) -> tuple[Path, Path]:
    """The two files pipeline_distributed.save_final_heads writes: a pickle of the list and 'l,h' lines."""
    folder.mkdir(parents=True, exist_ok=True)
    pkl, txt = folder / "final_perturb_heads.pkl", folder / "final_perturb_heads.txt"
    with open(pkl, "wb") as f:
        pickle.dump(SELECTED, f)
    with open(txt, "w") as f:
        for layer, head in SELECTED:
            f.write(f"{layer},{head}\n")
    return pkl, txt


def test_the_text_file_and_the_pickle_read_as_the_same_heads_in_selection_order(tmp_path):
    pkl, txt = _authors_files(tmp_path)
    for path in (pkl, txt, str(pkl), str(txt)):
        heads = HeadSet.coerce(path)
        assert [(h.layer, h.head, h.softness) for h in heads] == [(2, 3, None), (0, 1, None), (1, 0, None)]
        assert heads == HeadSet.parse("L2H3,L0H1,L1H0")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # older scripts may have written other protocols
        pkl.write_bytes(pickle.dumps([tuple(p) for p in SELECTED], protocol=protocol))
        assert HeadSet.coerce(pkl) == HeadSet.parse("L2H3,L0H1,L1H0"), protocol
    assert "reference implementation" in load_preset(txt)["description"]


def test_the_files_guide_a_pipeline_like_the_same_heads_written_by_hand(tmp_path):
    pkl, txt = _authors_files(tmp_path)
    pipe = tiny_pipeline("tiny-sd3")
    kw = dict(num_inference_steps=2, height=32, width=32, pag_scale=2.0, output_type="np")

    def image(heads):
        return pipe("a red fox", pag_heads=heads, generator=_gen(), **kw).images

    by_hand = image("L2H3,L0H1,L1H0")
    np.testing.assert_array_equal(image(str(pkl)), by_hand)
    np.testing.assert_array_equal(image(str(txt)), by_hand)
    assert np.abs(image(None) - by_hand).max() > 1e-4  # the heads do something


def _gen():
    return torch.Generator().manual_seed(0)


class _RunsCode:
    """Unpickling this calls _touch(path): what a malicious head file would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path: str) -> list:
    Path(path).write_text("ran")
    return [(0, 0)]


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, protocol):
    marker = tmp_path / "ran"
    bad = tmp_path / "final_perturb_heads.pkl"
    bad.write_bytes(pickle.dumps([(1, 2), _RunsCode(str(marker))], protocol=protocol))
    assert pickle.loads(bad.read_bytes()) and marker.exists()  # the file does what it says when loaded plainly
    marker.unlink()
    with pytest.raises(ValueError, match=r"refusing this pickle: it holds a reference to "
                                         r"test_authors_heads\._touch .*nothing in it was executed"):
        HeadSet.coerce(bad)
    assert not marker.exists()
    eval_pickle = tmp_path / "eval.pkl"  # os.system through builtins.eval, the classic payload
    eval_pickle.write_bytes(b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.")
    with pytest.raises(ValueError, match="a reference to builtins.eval"):
        HeadSet.coerce(eval_pickle)
    assert not marker.exists()


def test_other_pickles_and_text_are_refused_with_the_reason(tmp_path):
    cases = {
        "scores.pkl": (pickle.dumps({(0, 1): {"pick": 21.5}}), "EMPTY_DICT"),  # the authors' scores.pkl: not heads
        "floats.pkl": (pickle.dumps([(0.5, 1)]), "BINFLOAT"),
        "flat.pkl": (pickle.dumps([1, 2, 3]), r"entry 1 is 1, not a \(layer, head\) pair"),
        "negative.pkl": (pickle.dumps([(1, -2)]), "not a \\(layer, head\\) pair of non-negative integers"),
        "empty.pkl": (pickle.dumps([]), "names no heads"),
        "junk.pkl": (b"\x80\x04junk", "not a readable pickle"),
        "big.pkl": (b"\x80\x04" + b"K\x01" * (1 << 20), "too large"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            HeadSet.coerce(tmp_path / name)
    (tmp_path / "heads.txt").write_text("13,17\nL2H5\n")
    with pytest.raises(ValueError, match=r"line 2: 'L2H5' is not 'layer,head'"):
        HeadSet.coerce(str(tmp_path / "heads.txt"))
    with pytest.raises(ValueError, match="does not exist"):
        HeadSet.coerce(str(tmp_path / "missing.pkl"))
    assert not os.path.exists(tmp_path / "ran")
