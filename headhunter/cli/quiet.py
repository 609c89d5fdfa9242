"""Keep the command line's output to what matters: drop notices known to be harmless and say once that prompts are
truncated, not once per image and text encoder."""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["quiet_known_notices"]

HARMLESS = (
    # transformers announces at import that its image processors fall back to PIL without torchvision; headhunter
    # never uses torchvision (its preprocessing is plain torch).
    "requires torchvision",
    # the tokenizer's generic length notice; the pipelines truncate to what each text encoder reads and say so below
    "Token indices sequence length is longer than the specified maximum",
)
TRUNCATION = "The following part of your input was truncated"
# A logger's filters see only the records logged on that very logger (not those propagated from its children), so
# the filters go on the modules that emit these notices.
NOISY_LOGGERS = (
    "transformers.utils.import_utils",
    "transformers.tokenization_utils_base",
    "diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3",
    "diffusers.pipelines.flux.pipeline_flux",
)


class _Notices(logging.Filter):
    """Drops the harmless notices; lets the first truncation notice through (saying later ones are not shown) and
    drops the rest: CLIP and T5 each report every truncated prompt of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.truncation_shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in HARMLESS):
            return False
        if TRUNCATION in message:
            if self.truncation_shown:
                return False
            self.truncation_shown = True
            record.msg, record.args = message + " (later truncation notices are not shown)", ()
        return True


def quiet_known_notices() -> None:
    """Install the filters (idempotent); called by ``headhunter`` before any library is imported."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_SYMLINKS_WARNING", "1")
    # diffusers still passes the retired `local_dir_use_symlinks` to huggingface_hub, which warns on every load
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
    notices = _Notices()
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Notices) for f in logger.filters):
            logger.addFilter(notices)
