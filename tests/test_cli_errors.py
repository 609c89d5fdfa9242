"""Every user-caused failure of every command: one line on stderr, exit status 2, no traceback, nothing written.

Each case runs the real ``headhunter`` command in a subprocess, in an empty working folder, and compares that
folder (and the named output paths) before and after.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _files(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _read_only_dir(tmp: Path) -> str:
    """A folder nobody can write to: chmod works for ordinary users; root writes through it, so take /proc/1."""
    if os.geteuid() == 0:
        return "/proc/1/headhunter-out"
    folder = tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


def _setup(tmp: Path) -> dict:
    (tmp / "prompts.txt").write_text("a red fox\n")
    (tmp / "latin1.txt").write_bytes("a red fox\nun caf\xe9 au lait\n".encode("latin-1"))
    (tmp / "a-file").write_text("not a folder\n")
    (tmp / "list.json").write_text(json.dumps([{"heads": "L1"}]))
    (tmp / "notes.png").write_text("this is text, not a PNG\n")
    return {"ro": _read_only_dir(tmp)}


EVAL = ["eval", "--prompts", "prompts.txt", "--metrics", "brightness", "--out", "run"]
SEARCH = ["search", "--objective", "brightness", "--prompt", "a fox", "--run-dir", "run"]
GENERATE = ["generate", "--prompt", "a fox", "--out", "out"]

CASES = [
    # (id, argv, message regex)
    ("generate --steps 0", [*GENERATE, "--steps", "0"], r"--steps: '0' must be at least 1"),
    ("generate negative pag scale", [*GENERATE, "--pag-scale", "-3"], r"must be a finite number >= 0"),
    ("generate --size 100000", [*GENERATE, "--size", "100000"], r"too large \(at most 8192"),
    ("generate --size 33", [*GENERATE, "--size", "33"], r"height 33 must be a multiple of 4"),
    ("generate --device cuda without CUDA", [*GENERATE, "--device", "cuda"], r"CUDA is not available"),
    ("generate unknown device", [*GENERATE, "--device", "banana"], r"unknown device 'banana'"),
    ("generate --out is a file", ["generate", "--prompt", "x", "--out", "a-file"], r"--out 'a-file' is a file"),
    ("generate softness 2", [*GENERATE, "--heads", "L1", "--softness", "2"], r"outside \[0, 1\]"),
    ("generate head out of range", [*GENERATE, "--heads", "L1H99"], r"L1H99: head 99 is out of range"),
    ("generate missing model", [*GENERATE, "--model", "/nonexistent/folder"], r"model folder '/nonexistent/folder' does not exist"),
    ("generate unknown hub id offline", [*GENERATE, "--model", "nobody/no-such-model"], r"cannot read model 'nobody/no-such-model'"),
    ("generate bad seeds", [*GENERATE, "--seed", "one"], r"seeds 'one' must be integers"),
    ("generate --pag-reuse 0", [*GENERATE, "--heads", "L1", "--pag-reuse", "0"],
     r"--pag-reuse: '0' must be at least 1"),
    ("generate --pag-reuse 1.5", [*GENERATE, "--heads", "L1", "--pag-reuse", "1.5"], r"--pag-reuse: '1.5'"),
    ("generate unknown --pag-mode", [*GENERATE, "--heads", "L1", "--pag-mode", "third"], r"invalid choice: 'third'"),
    ("generate --pag-mode uncond without CFG", [*GENERATE, "--heads", "L1", "--pag-mode", "uncond"],
     r"pag_mode='uncond' perturbs the unconditional pass, which runs only with classifier-free guidance \(--cfg > 1\)"),
    ("eval reuse=1.5 in a setting", [*EVAL, "--setting", "s: heads=L1, reuse=1.5"], r"reuse='1.5' is not a int"),
    ("eval mode=uncond without CFG", [*EVAL, "--setting", "s: heads=L1, mode=uncond"],
     r"setting 's': pag_mode='uncond' perturbs the unconditional pass"),
    ("generate empty prompt", ["generate", "--prompt", " ", "--out", "out"], r"--prompt is empty"),
    ("search --run-dir is a file", [*SEARCH[:-1], "a-file"], r"--run-dir 'a-file' is a file"),
    ("search --steps 0", [*SEARCH, "--steps", "0"], r"--steps: '0' must be at least 1"),
    ("search --size 33", [*SEARCH, "--size", "33"], r"must be a multiple of 4"),
    ("search prompt file not UTF-8", ["search", "--objective", "brightness", "--prompt-file", "latin1.txt",
                                      "--run-dir", "run"], r"not UTF-8 text: line 2, column 7"),
    ("search --top-k 0", [*SEARCH, "--top-k", "0"], r"--top-k: '0' must be at least 1"),
    ("search unknown objective", ["search", "--objective", "nope", "--prompt", "x", "--run-dir", "run"],
     r"unknown scorer 'nope'"),
    ("search unknown strategy", [*SEARCH, "--strategy", "random"], r"invalid choice: 'random'"),
    ("eval --out is a file", [*EVAL[:-1], "a-file", "--setting", "base:"], r"--out 'a-file' is a file"),
    ("eval read-only --out", [*EVAL[:-1], "{ro}", "--setting", "base:"], r"is not writable"),
    ("eval settings file of the wrong shape", [*EVAL, "--settings-file", "list.json"],
     r"must map setting names to tables"),
    ("eval steps=0 in a setting", [*EVAL, "--setting", "s: steps=0"], r"steps must be at least 1"),
    ("eval steps=0 on FLUX", [*EVAL, "--model", "tiny-flux", "--setting", "s: steps=0"], r"steps must be at least 1"),
    ("eval width=100000 in a setting", [*EVAL, "--setting", "s: width=100000"], r"width 100000 is larger"),
    ("eval unknown baseline", [*EVAL, "--setting", "base:", "--baseline", "cfg"], r"--baseline 'cfg' is not one"),
    ("eval prompts not UTF-8", ["eval", "--prompts", "latin1.txt", "--metrics", "brightness", "--out", "run",
                                "--setting", "base:"], r"not UTF-8 text: line 2"),
    ("eval unknown metric", ["eval", "--prompts", "prompts.txt", "--metrics", "blurriness", "--out", "run",
                             "--setting", "base:"], r"unknown scorer 'blurriness'"),
    ("score a file that is not an image", ["score", "notes.png", "--objective", "brightness", "--prompt", "x"],
     r"notes.png is not an image"),
    ("score on cuda without CUDA", ["score", "notes.png", "--objective", "brightness", "--device", "cuda"],
     r"CUDA is not available"),
    ("ui port out of range", ["ui", "--port", "70000"], r"--port 70000 is not a TCP port"),
]


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, argv, message):
    paths = _setup(tmp_path)
    argv = [a.format(**paths) for a in argv]
    before = _files(tmp_path)
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "headhunter", *argv], cwd=tmp_path, capture_output=True, text=True,
                          env=env, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert __import__("re").search(message, lines[0]), lines[0]
    assert _files(tmp_path) == before
    assert not Path(paths["ro"]).exists() or not any(Path(paths["ro"]).iterdir())
