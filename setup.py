"""Package discovery for the one distribution: ``headhunter/`` plus the ``pipelines/`` and ``ui/`` folders, installed as
``headhunter.pipelines`` and ``headhunter.ui``. Every package below those folders and every data file inside them
(presets, model weights, ...) is found here, so nothing depends on a hand-kept list. Metadata lives in pyproject.toml."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
# import name -> folder
FOLDERS = {"headhunter": "headhunter", "headhunter.pipelines": "pipelines", "headhunter.ui": "ui"}
SKIP_DATA = {".py", ".pyc", ".pyo"}


def _data_files(directory: Path) -> list[Path]:
    """Data files of one package: its own, and those in its sub-folders that are not packages themselves (a model
    folder such as headhunter/testbed/toy-shapes/transformer/)."""
    found = []
    for path in directory.iterdir():
        if path.is_file() and path.suffix not in SKIP_DATA:
            found.append(path)
        elif path.is_dir() and path.name != "__pycache__" and not (path / "__init__.py").exists():
            found += _data_files(path)
    return found


def discover() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    packages, package_dir, package_data = [], {}, {}
    for name, folder in FOLDERS.items():
        if folder != name.replace(".", "/"):
            package_dir[name] = folder
        for sub in ["", *find_packages(folder)]:
            package = f"{name}.{sub}" if sub else name
            if package in FOLDERS and package != name:
                continue  # a folder mapped on its own (headhunter.pipelines is not headhunter/pipelines)
            packages.append(package)
            directory = ROOT / folder / sub.replace(".", "/")
            files = [p.relative_to(directory).as_posix() for p in _data_files(directory)]
            if files:
                package_data[package] = sorted(files)
    return packages, package_dir, package_data


packages, package_dir, package_data = discover()
setup(packages=packages, package_dir=package_dir, package_data=package_data)
