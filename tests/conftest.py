import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def attention_backend_restored():
    """diffusers' ``set_attention_backend`` also sets the process-wide active backend (and ``reset_attention_backend``
    does not put it back); a test that chose one must not change the kernels of the tests after it."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(before)


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
