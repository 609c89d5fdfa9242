import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def sd3_components():
    from headhunter.testing import tiny_components

    return tiny_components("tiny-sd3")


@pytest.fixture(scope="session")
def sd35_dual_components():
    from headhunter.testing import tiny_components

    return tiny_components("tiny-sd3.5-dual")


@pytest.fixture(scope="session")
def flux_components():
    from headhunter.testing import tiny_components

    return tiny_components("tiny-flux")
