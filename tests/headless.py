"""The DOM of a local page as Debian's headless Chromium renders it (scripts run), for the report tests."""

import shutil
import subprocess
import tempfile
from pathlib import Path


def dump_dom(page: Path) -> str:
    """``page`` opened in headless Chromium with nothing reaching the network; its DOM after 10 s of virtual time."""
    profile = tempfile.mkdtemp()
    try:
        return subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        ).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
