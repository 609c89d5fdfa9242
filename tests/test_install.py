"""A normal, non-editable install works: the wheel holds every package and data file, and the installed command runs
from another folder without the source tree on the path.

The wheel is built from the repository's files (tracked and not ignored) copied to a temporary folder, installed
with ``--no-deps`` into a fresh virtual environment that sees this environment's dependencies through a ``.pth``
line (no network needed), and exercised from an unrelated working folder.
"""

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_files() -> list[str]:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout to know which files are the project's")
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    for name in _source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    dist = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = dist.glob("headhunter-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from this environment; a .pth line adds its folder but runs none of its .pth files, so
    # the editable install of the checkout stays invisible
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    return {"wheel": wheel, "venv": venv, "python": python, "workdir": workdir}


def _run(installed, *argv, timeout=300):
    env = {"PATH": f"{installed['venv'] / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(installed["workdir"])}
    return subprocess.run(list(argv), cwd=installed["workdir"], capture_output=True, text=True, env=env, timeout=timeout)


def test_wheel_holds_every_package_module_and_data_file(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    expected = set()
    for folder, package in (("headhunter", "headhunter"), ("pipelines", "headhunter/pipelines"), ("ui", "headhunter/ui")):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                expected.add(f"{package}/{path.relative_to(ROOT / folder).as_posix()}")
    assert expected - names == set()
    assert any(n.endswith(".json") and "/presets/" in n for n in names)


def test_installed_package_imports_every_module_outside_the_source_tree(installed):
    modules = sorted(
        n[: -len(".py")].replace("/", ".").removesuffix(".__init__")
        for n in zipfile.ZipFile(installed["wheel"]).namelist() if n.endswith(".py") and n.startswith("headhunter/")
    )
    assert {"headhunter.scorers", "headhunter.search", "headhunter.evaluate", "headhunter.pipelines",
            "headhunter.ui"} <= set(modules)
    if importlib.util.find_spec("gradio") is None:  # the studio is an extra: without Gradio it is not importable
        modules = [m for m in modules if not m.startswith("headhunter.ui")]
    code = ("import importlib, sys, headhunter\n"
            f"for name in {modules!r}:\n"
            "    if name != 'headhunter.__main__':\n"
            "        importlib.import_module(name)\n"
            "print(headhunter.__file__)\n")
    proc = _run(installed, str(installed["python"]), "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(str(installed["venv"])), proc.stdout


def test_installed_command_help_and_demo(installed):
    proc = _run(installed, "headhunter", "--help")
    assert proc.returncode == 0 and "generate" in proc.stdout and "search" in proc.stdout
    proc = _run(installed, "headhunter", "demo", "--out", "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (installed["workdir"] / "demo" / "eval" / "report.html").is_file()
    assert (installed["workdir"] / "demo" / "search" / "selected.json").is_file()
    assert proc.stderr.strip() == "", proc.stderr[-3000:]  # no notices on a plain run
    proc = _run(installed, "headhunter", "generate", "--prompt", "x", "--heads", "sd3-shadow", "--out", "x")
    assert proc.returncode == 2 and "L13H17: layer 13 is out of range" in proc.stderr  # the shipped preset loads
