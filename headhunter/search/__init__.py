"""HeadHunter: find the attention heads that serve an objective (Algorithm 1 of the paper), batched, resumable and
sharded over processes. See :class:`HeadHunter`."""

from .config import SearchConfig, prompt_seed_pairs, spread_order, style_prompts
from .engine import HeadHunter, SearchCancelled, SearchResult

__all__ = ["HeadHunter", "SearchCancelled", "SearchConfig", "SearchResult", "prompt_seed_pairs", "spread_order",
           "style_prompts"]
