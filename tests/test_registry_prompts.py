import json

import pytest

from mrgen.data.modalities import RegistryError, UnknownModalityError, load_registry
from mrgen.data.prompts import build_prompt, radiopaedia_modality_key

REFERENCE_ATTRIBUTES = {  # reference section 14, byte for byte
    "T1 in-phase Abdomen MRI": "fat high signal, muscle intermediate signal, water low signal, fat bright",
    "T1 out-of-phase Abdomen MRI": "fat low signal, muscle intermediate signal, water low signal, fat dark",
    "T2 SPIR Abdomen MRI": "fat low signal, muscle low signal, water high signal, fat dark, water bright",
    "T1 Abdomen MRI": "fat high signal, muscle intermediate signal, water low signal, fat bright, water dark",
    "T2 Abdomen MRI": "fat moderate signal, muscle low signal, water high signal, fat moderately bright, muscle dark",
    "ADC Abdomen MRI": "fat low signal, muscle low signal, water high signal, water bright",
    "Abdomen CT": "fat low signal, muscle moderate signal, water low signal, fat dark, muscle gray, water dark",
}


def test_default_registry_has_the_reference_strings():
    registry = load_registry()
    for key, text in REFERENCE_ATTRIBUTES.items():
        assert registry.attributes(key) == text


def test_stage1_prompt_equals_reference_example():
    # reference 4.2: aux "T2" + modality "MRI", organs as one string
    key = radiopaedia_modality_key("MRI", "T2")
    prompt = build_prompt(load_registry(), key, "Upper Abdominal Region", "liver, spleen")
    assert prompt == ("T2 Abdomen MRI, fat moderate signal, muscle low signal, water high signal, "
                      "fat moderately bright, muscle dark, Upper Abdominal Region, liver, spleen")


def test_chaos_target_prompt_equals_reference_example():
    label = ["liver", "right kidney", "left kidney", "spleen", "kidney"]
    prompt = build_prompt(load_registry(), "T2 SPIR Abdomen MRI", "Upper Abdominal Region", label)
    assert prompt == ("T2 SPIR Abdomen MRI, fat low signal, muscle low signal, water high signal, fat dark, "
                      "water bright, Upper Abdominal Region, liver, right kidney, left kidney, spleen, kidney")


def test_empty_items_are_skipped():
    assert build_prompt(load_registry(), "Abdomen CT", "", []) == "Abdomen CT, " + REFERENCE_ATTRIBUTES["Abdomen CT"]


@pytest.mark.parametrize("modality,aux,key", [("MRI", "T2", "T2 Abdomen MRI"), ("MRI", None, "Abdomen MRI"),
                                              ("MRI", "", "Abdomen MRI"), ("CT", "whatever", "Abdomen CT"),
                                              ("MRI", "T1 C+ fat sat", "T1 C+ fat sat Abdomen MRI")])
def test_radiopaedia_modality_key(modality, aux, key):
    assert radiopaedia_modality_key(modality, aux) == key


def test_unknown_modality_is_an_error_not_a_blank():
    with pytest.raises(UnknownModalityError, match="T2 SPIR Abdomen MRI"):
        build_prompt(load_registry(), "T2 SPIR Abdomen MR", "Upper Abdominal Region", ["liver"])


def test_non_ascii_registry_is_rejected(tmp_path):
    path = tmp_path / "reg.json"
    path.write_text(json.dumps({"T1 out-of-phase Abdomen MRI": "fat low signal, water\u4f4e signal"}), encoding="utf-8")
    with pytest.raises(RegistryError, match="non-ASCII"):
        load_registry(path)


@pytest.mark.parametrize("content", ["[]", "{}", '{"a": ""}', '{"a": 3}', "not json"])
def test_malformed_registry_is_rejected(tmp_path, content):
    path = tmp_path / "reg.json"
    path.write_text(content)
    with pytest.raises(RegistryError, match=str(path)):
        load_registry(path)


def test_user_registry_replaces_or_merges(tmp_path):
    path = tmp_path / "full.json"
    path.write_text(json.dumps({"T1 C+ fat sat Abdomen MRI": "fat dark"}))
    own = load_registry(path)
    assert own.keys() == ["T1 C+ fat sat Abdomen MRI"]
    merged = load_registry(path, merge_with_default=True)
    assert "T1 C+ fat sat Abdomen MRI" in merged and "T2 SPIR Abdomen MRI" in merged
