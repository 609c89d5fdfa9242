import pytest
import torch

from headhunter.testing import TINY_MODELS, tiny_clip_tokenizer, tiny_components, tiny_t5_tokenizer


@pytest.mark.parametrize("model", TINY_MODELS)
def test_tiny_components_are_deterministic_and_in_eval_mode(model):
    a, b = tiny_components(model), tiny_components(model)
    for name, module in a.items():
        if isinstance(module, torch.nn.Module):
            assert not module.training, name
            other = b[name].state_dict()
            assert all(torch.equal(t, other[k]) for k, t in module.state_dict().items()), name


def test_tiny_variants_have_the_features_they_name():
    sd35 = tiny_components("tiny-sd3.5")["transformer"]
    assert sd35.transformer_blocks[0].attn.norm_q is not None
    dual = tiny_components("tiny-sd3.5-dual")["transformer"]
    assert dual.transformer_blocks[0].attn2 is not None and getattr(dual.transformer_blocks[1], "attn2", None) is None
    assert tiny_components("tiny-sd3")["transformer"].transformer_blocks[0].attn.norm_q is None


def test_tokenizers_cover_any_text():
    clip, t5 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    text = "Golden hour, a café — naïve 42%!"
    ids = clip(text).input_ids
    assert ids[0] == clip.bos_token_id and ids[-1] == clip.eos_token_id and clip.unk_token_id not in ids[1:-1]
    t5_ids = t5("a photo of a cat").input_ids
    assert t5_ids[-1] == t5.eos_token_id and t5.unk_token_id not in t5_ids
