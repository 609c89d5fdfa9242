"""PNG text other tools read and write: A1111's ``parameters`` layout (checked with a parser written here, after
A1111's own description of the format), ComfyUI's API graph, and the studio's loading of both."""

import json
import re

import pytest
from PIL import Image, PngImagePlugin

from headhunter.metadata import read_png_settings, read_settings, save_png
from headhunter.parameters import parse_a1111, parse_comfyui

# An A1111 1.10 infotext as its PNG Info shows it (a LoRA hash list quoted because it holds commas and colons)
A1111_TEXT = ("masterpiece, a cat, sitting on a chair\n"
              "Negative prompt: lowres, bad anatomy\n"
              "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 832x1216, "
              'Model hash: 1a2b3c4d, Model: sdxl_base, Lora hashes: "detail: 0123abcd, film: 4567ef01", Version: v1.10.1')
# Forge on FLUX.1: the distilled guidance has its own key
FORGE_TEXT = ("a lighthouse at dusk\nSteps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 7, "
              "Size: 1024x768, Model: flux1-dev")
# ComfyUI's default workflow in API form, with a FluxGuidance node between the prompt and the sampler
COMFY_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 156680208, "steps": 25, "cfg": 4.5, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1, "model": ["4", 0],
                                               "positive": ["10", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd3.5_medium.safetensors"}},
    "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 640, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery, nature", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "10": {"class_type": "FluxGuidance", "inputs": {"guidance": 3.0, "conditioning": ["6", 0]}},
}


def parse_infotext(text):
    """A1111's infotext by hand: the last line is ``Key: value`` pairs (a value in double quotes is JSON), the lines
    before it the prompt, then from ``Negative prompt:`` on the negative prompt."""
    *head, last = text.split("\n")
    pairs, rest = {}, last
    while rest.strip():
        key, rest = rest.split(":", 1)
        rest = rest.lstrip()
        if rest.startswith('"'):
            value, end = json.JSONDecoder().raw_decode(rest)
            rest = rest[end:]
        else:
            value, _, rest = rest.partition(",")
            value = value.strip()
        pairs[key.strip()] = value
        rest = rest.lstrip(", ")
    split = next((i for i, line in enumerate(head) if line.startswith("Negative prompt: ")), len(head))
    negative = "\n".join(head[split:])[len("Negative prompt: "):] if split < len(head) else ""
    return "\n".join(head[:split]), negative, pairs


def test_the_hand_parser_reads_a1111s_own_text():
    prompt, negative, pairs = parse_infotext(A1111_TEXT)
    assert (prompt, negative) == ("masterpiece, a cat, sitting on a chair", "lowres, bad anatomy")
    assert pairs["Lora hashes"] == "detail: 0123abcd, film: 4567ef01" and pairs["Size"] == "832x1216"


def test_headhunter_pngs_carry_a1111_parameters_and_the_full_json(tmp_path):
    settings = {"model": "toy-shapes", "prompt": "a red circle, top left: bright", "negative_prompt": "blurry, dark",
                "seed": 12, "num_inference_steps": 20, "width": 32, "height": 48, "guidance_scale": 2.5,
                "pag_heads": "L1H0,L2H3@0.5", "pag_scale": 3.0, "pag_softness": 0.75, "pag_target": "identity",
                "pag_scope": "joint", "pag_interval": [0.25, 1.0], "pag_reuse": 2, "max_sequence_length": 1}
    path = save_png(Image.new("RGB", (32, 48)), tmp_path / "a.png", settings)
    text = Image.open(path).text
    prompt, negative, pairs = parse_infotext(text["parameters"])
    assert (prompt, negative) == ("a red circle, top left: bright", "blurry, dark")
    assert {k: pairs[k] for k in ("Steps", "CFG scale", "Seed", "Size", "Model")} == \
        {"Steps": "20", "CFG scale": "2.5", "Seed": "12", "Size": "32x48", "Model": "toy-shapes"}
    assert (pairs["PAG heads"], pairs["PAG scale"], pairs["PAG softness"], pairs["PAG interval"], pairs["PAG reuse"]) == \
        ("L1H0,L2H3@0.5", "3", "0.75", "0.25-1", "2")
    assert read_settings(path) == settings  # every field, exactly, in the JSON chunk
    assert read_png_settings(path) == (settings, "headhunter")
    # the unguided image has no head-guidance fields; FLUX's CFG is true CFG and the distilled guidance is Forge's
    flux = {"prompt": "x", "seed": 1, "num_inference_steps": 4, "width": 64, "height": 64, "true_cfg_scale": 1.0,
            "guidance_scale": 3.5, "pag_heads": None, "pag_scale": 3.0}
    _, _, pairs = parse_infotext(Image.open(save_png(Image.new("RGB", (8, 8)), tmp_path / "f.png", flux)).text["parameters"])
    assert (pairs["CFG scale"], pairs["Distilled CFG Scale"]) == ("1", "3.5") and not any(k.startswith("PAG") for k in pairs)


def _png_with_text(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a1111_forge_and_comfyui_pngs_give_the_fields_they_share(tmp_path):
    a1111 = read_png_settings(_png_with_text(tmp_path / "a.png", parameters=A1111_TEXT))
    assert a1111 == ({"prompt": "masterpiece, a cat, sitting on a chair", "negative_prompt": "lowres, bad anatomy",
                      "seed": 1234567, "num_inference_steps": 28, "cfg_scale": 6.5, "width": 832, "height": 1216},
                     "A1111")
    forge = parse_a1111(FORGE_TEXT)
    assert (forge["cfg_scale"], forge["distilled_cfg_scale"], forge["width"], forge["height"]) == (1.0, 3.5, 1024, 768)
    comfy = read_png_settings(_png_with_text(tmp_path / "c.png", prompt=json.dumps(COMFY_GRAPH),
                                             workflow=json.dumps({"nodes": []})))
    assert comfy == ({"seed": 156680208, "num_inference_steps": 25, "cfg_scale": 4.5, "distilled_cfg_scale": 3.0,
                      "prompt": "beautiful scenery, nature", "negative_prompt": "text, watermark", "width": 640,
                      "height": 512}, "ComfyUI")
    with pytest.raises(ValueError, match="no 'Steps: …, Seed: …' line"):
        parse_a1111("just a caption someone wrote")
    with pytest.raises(ValueError, match="no KSampler"):
        parse_comfyui(json.dumps({"1": {"class_type": "LoadImage", "inputs": {}}}))
    with pytest.raises(ValueError, match="carries no settings"):
        read_png_settings(_png_with_text(tmp_path / "plain.png", Comment="hello"))


def test_the_studio_loads_the_shared_fields_of_a_foreign_png_and_keeps_its_heads(tmp_path):
    gr = pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")
    from headhunter.testing import tiny_pipeline
    from headhunter.ui import Settings, Studio

    studio = Studio(tiny_pipeline("tiny-sd3"), "tiny-sd3", tmp_path / "workspace")
    current = Settings("a boat", seed=1, steps=2, width=32, height=32, heads="L1H0", pag_scale=2.0, softness=0.5)
    text = A1111_TEXT.replace("832x1216", "64x32")  # a size this tiny model takes
    loaded = Settings(*studio.settings_from_png(str(_png_with_text(tmp_path / "a.png", parameters=text)), current))
    assert loaded == Settings("masterpiece, a cat, sitting on a chair", negative="lowres, bad anatomy", seed=1234567,
                              steps=28, width=64, height=32, cfg=6.5, heads="L1H0", pag_scale=2.0, softness=0.5)
    with pytest.raises(gr.Error, match=re.escape("PNG: it carries no settings")):
        studio.settings_from_png(str(_png_with_text(tmp_path / "p.png", Comment="hi")), current)


def test_xy_axes_as_a1111_names_them():
    pytest.importorskip("gradio", reason="the studio needs the ui extra (gradio)")
    from headhunter.ui import Settings
    from headhunter.ui.xy import axis_label, column_settings, parse_axis_values

    base = Settings("a red fox in the snow", steps=4, cfg=1.0)
    values = parse_axis_values("Prompt S/R", 'red, blue, "green, pale"')
    assert values == ["red", "blue", "green, pale"]
    assert [column_settings(base, "Prompt S/R", values, c).prompt for c in range(3)] == \
        ["a red fox in the snow", "a blue fox in the snow", "a green, pale fox in the snow"]
    with pytest.raises(ValueError, match="'cat' is not in the prompt"):
        column_settings(base, "Prompt S/R", ["cat", "dog"], 1)
    intervals = parse_axis_values("Interval", "0-0.5, 0.5-1")
    assert [(s.start, s.end) for s in (column_settings(base, "Interval", intervals, c) for c in range(2))] == \
        [(0.0, 0.5), (0.5, 1.0)]
    assert [column_settings(base, "Steps", [1, 8], c).steps for c in range(2)] == [1, 8]
    assert column_settings(base, "CFG", [1.0, 4.5], 1).cfg == 4.5
    assert [axis_label("Interval", (0.0, 0.5)), axis_label("CFG", 4.5), axis_label("Steps", 8)] == \
        ["interval 0-0.5", "CFG 4.5", "steps 8"]
    for axis, text, message in (("Interval", "0.5-0.2", "intervals start-end"), ("Steps", "0,2", "steps must be 1"),
                                ("Prompt S/R", "red", "the text to search for"), ("CFG", "a", "numbers")):
        with pytest.raises(ValueError, match=message):
            parse_axis_values(axis, text)
