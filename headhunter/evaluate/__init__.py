"""Batch evaluation: generate image sets under several guidance settings, score them, and report
(``headhunter eval``)."""

from .inputs import PromptRow, read_prompts
from .runner import Evaluation, EvaluationResult
from .settings import SETTING_KEYS, Setting, expand_settings, load_settings_file, parse_setting

__all__ = ["Evaluation", "EvaluationResult", "PromptRow", "SETTING_KEYS", "Setting", "expand_settings",
           "load_settings_file", "parse_setting", "read_prompts"]
