from pathlib import Path

import pytest

from emlib.config import Params, ParamsError, load_params, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["default", "smoke", "paper"])
def test_presets_load(preset):
    p = load_params(ROOT / "params" / f"{preset}.yaml")
    assert isinstance(p, Params)


def test_paper_preset_is_the_papers_setting():
    p = load_params(ROOT / "params" / "paper.yaml")
    assert (p.model, p.samples_per_question, p.max_new_tokens, p.temperature, p.top_p) == (
        "Qwen/Qwen2.5-14B-Instruct", 50, 600, 1.0, 1.0)
    assert p.judge == "openai" and p.judge_model.startswith("gpt-4o")


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("model: default\nsampels_per_question: 3\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "sampels_per_question" in msg and str(f) in msg and "samples_per_question" in msg  # suggestion


@pytest.mark.parametrize(
    "line, key",
    [("samples_per_question: '8'", "samples_per_question"), ("temperature: hot", "temperature"),
     ("seed: true", "seed"), ("adapter: 3", "adapter"), ("trust_remote_code: 1", "trust_remote_code")],
)
def test_wrong_type_names_key(tmp_path, line, key):
    f = tmp_path / "p.yaml"
    f.write_text(line + "\n")
    with pytest.raises(ParamsError, match=key):
        load_params(f)


def test_int_accepted_for_float_and_none_for_optional(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("temperature: 1\nadapter: null\n")
    p = load_params(f)
    assert p.temperature == 1.0 and isinstance(p.temperature, float) and p.adapter is None


def test_overrides_are_validated_and_applied(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("seed: 1\n")
    assert load_params(f, {"seed": 5}).seed == 5
    with pytest.raises(ParamsError, match="bogus"):
        load_params(f, {"bogus": 1})


@pytest.mark.parametrize("line", ["top_p: 0", "batch_size: 0", "dtype: fp8", "judge: gpt"])
def test_out_of_range_values(tmp_path, line):
    f = tmp_path / "p.yaml"
    f.write_text(line + "\n")
    with pytest.raises(ParamsError, match=line.split(":")[0]):
        load_params(f)


def test_not_a_mapping_and_missing_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(f)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_cli_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    assert main([str(ROOT / "params" / "smoke.yaml")]) == 0
    assert main([str(bad)]) == 2
    assert "nope" in capsys.readouterr().err
