"""Neural scorers end to end on tiny random-weight models saved offline and loaded through the real loading code
(local paths instead of hub ids), against transformers' own forward or an independent open_clip reference."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scorer_fixtures import (TINY_BLIP_TEXT, TINY_BLIP_VISION, TINY_CLIP, hf_clip_to_openclip, imagereward_to_original,
                             openclip_reference_features, tiny_clip, write_bert_tokenizer, write_clip_folder)
from transformers import CLIPConfig

from headhunter.scorers import load_scorer
from headhunter.scorers.clip import AestheticHead
from headhunter.scorers.imagereward import ImageRewardModel, imagereward_to_transformers, load_blip_tokenizer
from headhunter.scorers.images import normalize, resize_and_pad, resize_center_crop
from headhunter.scorers.openclip import openclip_to_transformers
from headhunter.testing import tiny_clip_tokenizer

PROMPTS = ["a red fox in the snow", "an old lighthouse", "golden hour portrait"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    # seed 3: every test pair has a positive cosine, so CLIP score's max(cos, 0) does not hide the gradient
    clip_model = write_clip_folder(root / "clip", seed=3)
    head = AestheticHead(TINY_CLIP["projection_dim"])
    torch.manual_seed(1)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    torch.save(head.state_dict(), root / "aesthetic.pth")
    hps = tiny_clip(seed=2)
    torch.save({"state_dict": hf_clip_to_openclip(hps)}, root / "hps.pt")
    tiny_clip_tokenizer().save_pretrained(root / "clip-tokenizer")
    write_bert_tokenizer(root / "bert")
    torch.manual_seed(3)
    reward = ImageRewardModel(TINY_BLIP_VISION, TINY_BLIP_TEXT).eval()
    torch.save(imagereward_to_original(reward), root / "ImageReward.pt")
    return dict(root=root, clip=clip_model, head=head.eval(), hps=hps, reward=reward)


def images(n=3, size=(40, 48)):
    torch.manual_seed(7)
    return torch.rand(n, 3, *size)


def options(name, files):
    root = files["root"]
    return {
        "pickscore": dict(model_id=str(root / "clip"), processor_id=str(root / "clip")),
        "clip": dict(model_id=str(root / "clip")),
        "style:golden hour": dict(model_id=str(root / "clip"), neutral="a photo"),
        "aesthetic": dict(model_id=str(root / "aesthetic.pth"), clip_id=str(root / "clip")),
        "hpsv2": dict(model_id=str(root / "hps.pt"), tokenizer_id=str(root / "clip-tokenizer"),
                      config=CLIPConfig(**TINY_CLIP)),
        "hpsv21": dict(model_id=str(root), filename="hps.pt", tokenizer_id=str(root / "clip-tokenizer"),
                       config=CLIPConfig(**TINY_CLIP)),
        "imagereward": dict(model_id=str(root / "ImageReward.pt"), tokenizer_id=str(root / "bert"),
                            vision_config=TINY_BLIP_VISION, text_config=TINY_BLIP_TEXT),
    }[name]


SPECS = ["pickscore", "clip", "style:golden hour", "aesthetic", "hpsv2", "hpsv21", "imagereward"]


@pytest.mark.parametrize("spec", SPECS)
def test_scores_finite_batched_equals_single_and_gradients(files, spec):
    scorer = load_scorer(spec, local_files_only=True, **options(spec, files))
    x = images()
    scores = scorer(x, PROMPTS)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    for i in range(3):
        assert torch.allclose(scorer(x[i : i + 1], PROMPTS[i]), scores[i : i + 1], atol=1e-5)
    graded = load_scorer(spec, local_files_only=True, grad=True, **options(spec, files))
    pixels = x.clone().requires_grad_(True)
    graded(pixels, PROMPTS).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert load_scorer(spec, local_files_only=True, **options(spec, files)).terms[0][2] is scorer.terms[0][2]  # reused


def _clip_pixels(x, size=32):
    return normalize(resize_center_crop(x, size))


def test_pickscore_clip_style_aesthetic_match_transformers_forward(files):
    model, tok = files["clip"], tiny_clip_tokenizer()
    x = images()
    tokens = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=_clip_pixels(x))
        logits = out.logits_per_image.diag()
        cos = logits / model.logit_scale.exp()
        style_tokens = tok(["golden hour", "a photo"], padding="max_length", max_length=77, return_tensors="pt")
        style = model(input_ids=style_tokens.input_ids, attention_mask=style_tokens.attention_mask,
                      pixel_values=_clip_pixels(x))
        style_expected = 100 * (style.logits_per_image[:, 0] - style.logits_per_image[:, 1]) / model.logit_scale.exp()
        aesthetic_expected = files["head"](out.image_embeds)
    run = lambda spec: load_scorer(spec, local_files_only=True, **options(spec, files))(x, PROMPTS)  # noqa: E731
    assert torch.allclose(run("pickscore"), logits, atol=1e-5)
    assert torch.allclose(run("clip"), 100 * cos.clamp_min(0), atol=1e-4)
    assert torch.allclose(run("style:golden hour"), style_expected, atol=1e-4)
    assert torch.allclose(run("aesthetic"), aesthetic_expected, atol=1e-5)


def test_openclip_remap_reproduces_the_original_architecture(files):
    """HPS: the open_clip state dict, loaded into transformers' CLIPModel, gives the features of an independent
    open_clip forward on the same state dict."""
    sd = hf_clip_to_openclip(files["hps"])
    x = images()
    pixels = normalize(resize_and_pad(x, 32))
    tokens = tiny_clip_tokenizer()(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image_ref, text_ref = openclip_reference_features(sd, pixels, tokens.input_ids, heads=2)
    scores = load_scorer("hpsv2", local_files_only=True, **options("hpsv2", files))(x, PROMPTS)
    assert torch.allclose(scores, (image_ref * text_ref).sum(-1), atol=1e-5)
    # and the remapped model's own embeddings equal the reference's
    from transformers import CLIPModel

    model = CLIPModel(CLIPConfig(**TINY_CLIP)).eval()
    model.load_state_dict(openclip_to_transformers(sd), strict=True)
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    assert (image - image_ref).abs().max() <= 1e-5


def test_imagereward_remap_reproduces_the_tiny_model(files):
    model = files["reward"]
    x = images()
    tokenizer = load_blip_tokenizer(str(files["root"] / "bert"))
    tokens = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        expected = model(normalize(resize_center_crop(x, 32)), tokens.input_ids, tokens.attention_mask)
    got = load_scorer("imagereward", local_files_only=True, **options("imagereward", files))(x, PROMPTS)
    assert (got - expected).abs().max() <= 1e-5
    assert len(tokenizer) == TINY_BLIP_TEXT["vocab_size"]  # BLIP's [DEC] and [ENC] were added


@pytest.mark.parametrize("which", ["openclip", "imagereward"])
def test_unknown_or_missing_keys_are_errors(files, which):
    if which == "openclip":
        sd, remap = hf_clip_to_openclip(files["hps"]), openclip_to_transformers
        from transformers import CLIPModel
        target = CLIPModel(CLIPConfig(**TINY_CLIP))
    else:
        sd, remap = imagereward_to_original(files["reward"]), imagereward_to_transformers
        target = ImageRewardModel(TINY_BLIP_VISION, TINY_BLIP_TEXT)
    with pytest.raises(ValueError, match="unknown .* keys: \\['surprise.weight'\\]"):
        remap({**sd, "surprise.weight": torch.zeros(1)})
    missing = dict(sd)
    missing.pop(next(k for k in sd if "resblocks.1" in k or "blocks.1." in k))
    with pytest.raises(RuntimeError, match="Missing key"):
        target.load_state_dict(remap(missing), strict=True)


def test_torch_preprocessing_matches_clip_image_processor_pil_path():
    """Tolerance: max 0.03 and mean 0.01 in normalised units (≈ one 8-bit gray level: PIL resamples 8-bit images)."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    rng = np.random.default_rng(0)
    for width, height in [(512, 384), (768, 1024), (300, 500), (1024, 1024)]:
        base = (rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8)
        array = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC)).copy()
        array[height // 3 : height // 3 + 5] = 255  # a hard edge
        image = Image.fromarray(array)
        expected = torch.from_numpy(np.asarray(processor(images=image, return_tensors="np")["pixel_values"]))
        ours = normalize(resize_center_crop(torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, 224))
        diff = (ours - expected).abs()
        assert diff.max() <= 0.03 and diff.mean() <= 0.01, (width, height, diff.max(), diff.mean())


def test_unavailable_weights_raise_scorer_unavailable_naming_files(tmp_path):
    code = (
        "import json\n"
        "from headhunter.scorers import load_scorer, ScorerUnavailable\n"
        "out = {}\n"
        "for spec in ['pickscore', 'clip', 'style:golden hour', 'aesthetic', 'hpsv2', 'hpsv21', 'imagereward']:\n"
        "    try:\n"
        "        load_scorer(spec)\n"
        "        out[spec] = 'loaded'\n"
        "    except ScorerUnavailable as err:\n"
        "        out[spec] = str(err)\n"
        "print(json.dumps(out))\n"
    )
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected_names = {"pickscore": "PickScore_v1", "clip": "openai/clip-vit-large-patch14",
                      "style:golden hour": "openai/clip-vit-large-patch14", "aesthetic": "openai/clip-vit-large-patch14",
                      "hpsv2": "HPS_v2_compressed.pt", "hpsv21": "HPS_v2.1_compressed.pt", "imagereward": "ImageReward.pt"}
    for spec, name in expected_names.items():
        assert name in result[spec] and "hf download" in result[spec], (spec, result[spec])
