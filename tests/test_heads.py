import json
from pathlib import Path

import pytest

from headhunter import Head, HeadLayout, HeadSet, list_presets, load_preset, save_preset

SD3 = HeadLayout("sd3", num_layers=24, num_heads=24, head_dim=64)
FLUX = HeadLayout("flux", num_layers=57, num_heads=24, head_dim=128, num_double_layers=19)


def test_grammar_tokens_and_order():
    hs = HeadSet.parse(" l13h17 , L2-3, L0H1-3@0.5 ")
    assert list(hs) == [
        Head(13, 17), Head(2, None), Head(3, None), Head(0, 1, 0.5), Head(0, 2, 0.5), Head(0, 3, 0.5)
    ]
    assert len(hs) == 6
    assert str(hs) == "L13H17,L2-3,L0H1-3@0.5"


@pytest.mark.parametrize("text", ["L13H17", "L1H10,L11H15@0.25,L13", "L0-5,L7H3-9@1", "L4H2@0.123456789,L4H1", ""])
def test_canonical_form_round_trips(text):
    hs = HeadSet.parse(text)
    again = HeadSet.parse(str(hs))
    assert again == hs and list(again) == list(hs)
    assert HeadSet.from_json(hs.to_json()) == hs


def test_equivalent_inputs():
    expected = HeadSet.parse("L13H17@0.5,L1H2")
    assert HeadSet.coerce({(13, 17): 0.5, (1, 2): None}) == expected
    assert HeadSet.coerce([(13, 17, 0.5), (1, 2)]) == expected
    assert HeadSet.coerce({"L13H17": 0.5, "L1H2": None}) == expected
    assert HeadSet.coerce(expected) is expected
    assert HeadSet.coerce(None) == HeadSet() and not HeadSet.coerce("")


def test_union_keeps_order_and_later_softness():
    a = HeadSet.parse("L1H1,L2H2@0.5")
    b = HeadSet.parse("L2H2@0.25,L3H3")
    u = a | b
    assert [str(h) for h in u] == ["L1H1", "L2H2@0.25", "L3H3"]
    assert (a | "L2H2") == a  # no own softness: the earlier one stays


def test_softness_map_expands_layers_and_applies_default():
    hs = HeadSet.parse("L1,L1H2@0.5,L3H0")
    table = hs.softness_map(HeadLayout("sd3", 4, 3, 8), default=0.75)
    assert table == {(1, 0): 0.75, (1, 1): 0.75, (1, 2): 0.5, (3, 0): 0.75}


@pytest.mark.parametrize(
    "text,message",
    [
        ("L13X17", "bad head token 'L13X17'"),
        ("H3", "bad head token 'H3'"),
        ("L1H2,,L3", "empty head token"),
        ("L5-2", "reversed"),
        ("L1H9-3", "reversed"),
        ("L2-4H1", "layer range"),
        ("L1H1@2", r"outside \[0, 1\]"),
        ("L1H1@abc", "not a number"),
        ("L1H1@nan", r"outside \[0, 1\]"),
    ],
)
def test_parse_errors_name_the_token(text, message):
    with pytest.raises(ValueError, match=message):
        HeadSet.parse(text)


def test_validate_names_bad_token_and_range():
    with pytest.raises(ValueError, match=r"L24H0: layer 24 is out of range; this model has layers 0-23 \(L0..L23\), heads 0-23"):
        HeadSet.parse("L1H1,L24H0").validate(SD3)
    with pytest.raises(ValueError, match=r"L3H24: head 24 is out of range"):
        HeadSet.parse("L3H24").validate(SD3)
    assert HeadSet.parse("L56H23").validate(FLUX)
    with pytest.raises(ValueError, match="double-stream"):
        HeadSet.parse("L57").validate(FLUX)
    with pytest.raises(ValueError, match="non-negative integer"):
        HeadSet.coerce([(-1, 2)])


def test_flux_layout_numbering():
    assert FLUX.block_kind(18) == "double" and FLUX.block_kind(19) == "single"
    assert FLUX.module_name(19) == "single_transformer_blocks.0.attn"
    assert SD3.module_name(13) == "transformer_blocks.13.attn"


def test_layout_from_tiny_transformers(sd3_components, flux_components):
    sd3 = HeadLayout.from_transformer(sd3_components["transformer"])
    assert (sd3.model_type, sd3.num_layers, sd3.num_heads, sd3.head_dim) == ("sd3", 3, 4, 8)
    flux = HeadLayout.from_transformer(flux_components["transformer"])
    assert (flux.num_layers, flux.num_double_layers, flux.num_heads) == (5, 3, 2)
    assert flux.attention(flux_components["transformer"], 3) is flux_components["transformer"].single_transformer_blocks[0].attn


def test_shipped_presets_are_valid_and_sourced():
    presets = list_presets()
    assert {"sd3-shadow", "sd3-lighting", "flux-golden-hour", "flux-vintage-film"} <= set(presets)
    tiny = {"tiny-sd3": HeadLayout("sd3", 3, 4, 8), "tiny-flux": HeadLayout("flux", 5, 2, 16, num_double_layers=3)}
    for name, preset in presets.items():
        assert name.startswith(preset["family"])  # every shipped preset says which models it is for
        if preset["family"] in tiny:  # something to click on the offline models, and said to mean nothing
            preset["heads"].validate(tiny[preset["family"]])
            assert "random weights" in preset["source"]
            continue
        if preset["family"] == "toy-shapes":  # measured on the trained toy: the heads of the benchmark's searches
            preset["heads"].validate(HeadLayout("sd3", 6, 4, 24))
            assert "benchmarks/testbed.py" in preset["source"]
            results = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "testbed.json").read_text())
            found = [results["halving"]["greedy"]["selected"], *(label.split("(")[1].rstrip(")")
                                                                for label in results["style"] if "searched" in label)]
            assert str(preset["heads"]) in found, name
            continue
        layout = SD3 if preset["family"] == "sd3" else FLUX
        preset["heads"].validate(layout)
        assert preset["source"] and "2506.10978" in preset["source"]
    assert set(list_presets("flux")) == {n for n in presets if n.startswith("flux-")}
    assert load_preset("sd3-shadow")["heads"] == HeadSet.parse("L13H17")
    assert HeadSet.coerce("flux-golden-hour") == HeadSet.parse("L38H18")


def test_preset_file_round_trip(tmp_path):
    path = save_preset(tmp_path / "mine.json", "L1H2@0.5,L3", model="tiny", pag_scale=2.0, description="d")
    data = json.loads(path.read_text())
    assert data["format"] == "headhunter.heads/1" and data["heads"] == "L1H2@0.5,L3"
    assert HeadSet.coerce(str(path)) == HeadSet.parse("L1H2@0.5,L3")
    assert load_preset(path)["pag_scale"] == 2.0
    (tmp_path / "bad.json").write_text('{"heads": "L1"}')
    with pytest.raises(ValueError, match="not a head preset"):
        load_preset(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        HeadSet.coerce(str(tmp_path / "missing.json"))
