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


def _write(tmp_path, text: str):
    f = tmp_path / "study.yaml"
    f.write_text("model: default\ndevice_map: cpu\n" + text)
    return f


@pytest.mark.parametrize("text, key, problem", [
    ("compare_organisms: [all_medical, not_trained]\n", "compare_organisms", "not_trained is not among the organisms"),
    ("direction_organism: nobody\n", "direction_organism", "nobody is not among"),
    ("direction_organism: all_sport\n", "direction_organism", "must be an r1x9 organism"),
    ("judge_metrics: [aligned, coherent]\n", "judge_metrics", "must include bad_stuff"),
    ("steer_layers: [9, 30]\n", "steer_layers", "[30] out of range for default (30 layers"),
    ("organisms:\n  - {name: r1x9_medical, preset: r1x9, dataset: no_such_set}\n  - {name: all_medical, preset: all_r32, "
     "dataset: medical_bad}\n  - {name: all_sport, preset: all_r32, dataset: sports_extreme}\n", "organisms",
     "no such dataset"),
])
def test_check_params_rejects_what_a_chapter_would_reject_later(tmp_path, capsys, text, key, problem):
    """`make check-params` (python -m emlib.config FILE) names the file and the key, in seconds, before any training."""
    f = _write(tmp_path, text)
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and f"key '{key}'" in err and problem in err


def test_check_params_accepts_the_presets_that_run_offline(capsys):
    assert main([str(ROOT / "params" / "default.yaml"), str(ROOT / "params" / "smoke.yaml")]) == 0


def test_a_model_not_found_locally_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = tmp_path / "hub.yaml"
    f.write_text("model: nobody/no-such-model-xyz\n")
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert "key 'model'" in err and "not found locally" in err and "HF_HUB_OFFLINE=0" in err
