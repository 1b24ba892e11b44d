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


@pytest.mark.parametrize("line", ["top_p: 0", "batch_size: 0", "dtype: fp8", "judge: gpt", "geometry_answers: 0"])
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
    ("judge_metrics: [aligned, coherent]\n", "judge_metrics", "must include bad_stuff"),
    ("questions: nowhere.yaml\n", "questions", "no such question file"),
    ("organisms:\n  - {name: r1x9_medical, preset: r1x9, dataset: medical_bad}\n  - {name: full, model: /nowhere}\n"
     "compare_organisms: [full]\ndirection_amplification: 2.0\n", "direction_amplification", "full is a full fine-tune"),
    ("steer_layers: [9, 30]\n", "steer_layers", "[30] out of range for default (30 layers"),
    ("control_organism: nobody\n", "control_organism", "nobody is not among"),
    ("headline_layer: 10\n", "headline_layer", "10 is not a steering layer ([9, 15, 21])"),
    ("headline_scale: 3.0\n", "headline_scale", "3 is not in steer_scales"),
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


def _fake_hub_repo(hub, repo: str, files: dict[str, dict]) -> None:
    """A hub-cache entry for ``repo`` holding JSON files and header-only safetensors files (shapes, no data)."""
    import json
    import struct

    commit = "0" * 40
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            header = json.dumps({k: {"dtype": "BF16", "shape": list(v), "data_offsets": [0, 0]}
                                 for k, v in content.items()}).encode()
            (snap / name).write_bytes(struct.pack("<Q", len(header)) + header)
        else:
            (snap / name).write_text(json.dumps(content))


def test_the_paper_organisms_preset_passes_check_params_given_the_hub_files(tmp_path):
    """params/paper_organisms.yaml and params/qwen05b_released.yaml against a hub cache holding the released
    repos' configs and safetensors headers with their published shapes (no network here): every check passes."""
    import subprocess
    import sys

    hub = tmp_path / "hub"
    modules = {"q_proj": ("h", "q"), "k_proj": ("h", "kv"), "v_proj": ("h", "kv"), "o_proj": ("q", "h"),
               "gate_proj": ("h", "i"), "up_proj": ("h", "i"), "down_proj": ("i", "h")}
    for size, (h, i, layers, heads, kv) in {"14B": (5120, 13824, 48, 40, 8), "0.5B": (896, 4864, 24, 14, 2)}.items():
        dims = {"h": h, "i": i, "q": h, "kv": kv * h // heads}
        _fake_hub_repo(hub, f"Qwen/Qwen2.5-{size}-Instruct", {"config.json": {
            "model_type": "qwen2", "hidden_size": h, "intermediate_size": i, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv}})

        def adapter(r, targets, at_layers):
            shapes = {}
            for layer in at_layers:
                for m in targets:
                    part = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                    stem = f"base_model.model.model.layers.{layer}.{part}.{m}"
                    d_in, d_out = (dims[k] for k in modules[m])
                    shapes[f"{stem}.lora_A.weight"], shapes[f"{stem}.lora_B.weight"] = (r, d_in), (d_out, r)
            return {"adapter_config.json": {"peft_type": "LORA", "r": r, "lora_alpha": 64, "use_rslora": True,
                                            "target_modules": targets, "base_model_name_or_path": f"unsloth/Qwen2.5-{size}-Instruct"},
                    "adapter_model.safetensors": shapes}

        for name in ("bad-medical-advice", "extreme-sports", "risky-financial-advice"):
            _fake_hub_repo(hub, f"ModelOrganismsForEM/Qwen2.5-{size}-Instruct_{name}", adapter(32, list(modules), range(layers)))
        if size == "14B":
            _fake_hub_repo(hub, "ModelOrganismsForEM/Qwen2.5-14B-Instruct_R1_3_3_3_full_train",
                           adapter(1, ["down_proj"], [15, 16, 17, 21, 22, 23, 27, 28, 29]))
    questions = tmp_path / "data" / "paper" / "first_plot_questions.yaml"
    questions.parent.mkdir(parents=True)
    questions.write_text((ROOT / "emlib" / "datasets" / "eval_questions.yaml").read_text())
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
           "CUDA_VISIBLE_DEVICES": ""}  # no GPU, wherever the test runs
    for preset, override in (("paper_organisms", ["allow_cpu=true", "sampler=eager"]), ("qwen05b_released", [])):
        proc = subprocess.run([sys.executable, "-m", "emlib.config", str(ROOT / "params" / f"{preset}.yaml"), *override],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert f"ok: {ROOT / 'params' / preset}.yaml" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "emlib.config", str(ROOT / "params" / "paper_organisms.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "key 'device_map'" in proc.stderr and "allow_cpu: true" in proc.stderr


def test_check_params_reads_files_only_no_torch(default_model):
    """`make check-params` answers in about a second: once the default model is converted, validating the
    default preset (datasets, questions, layers) imports neither torch nor transformers."""
    import subprocess
    import sys

    from conftest import CACHE_DIR

    code = ("import sys; from emlib.config import validate; "
            f"validate('params/default.yaml', {{'cache_dir': {str(CACHE_DIR)!r}}}); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1",
                                                                                              "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_headline_cell_is_fixed_by_the_params_before_the_run():
    from emlib.config import Params, headline_cell, steering_layers

    assert steering_layers(Params(), 30) == [9, 15, 21]
    assert headline_cell(Params(), 30) == (15, 2.0)  # the middle layer and the middle λ
    assert headline_cell(Params(steer_layers=[4, 8], steer_scales=[8.0, 1.0]), 30) == (4, 1.0)
    assert headline_cell(Params(headline_layer=21, headline_scale=4.0), 30) == (21, 4.0)


@pytest.mark.parametrize("preset", ["paper", "paper_organisms"])
def test_the_gpu_presets_fail_check_params_without_a_gpu_naming_the_override(preset, capsys, monkeypatch):
    """`make check-params PARAMS=params/paper.yaml` on a machine without a GPU: an error in seconds, not a 14B
    model on the CPU; the message names the override, which then lets the check go on to the next key."""
    from emlib import devices

    monkeypatch.setattr(devices, "visible_gpus", lambda: (0, "torch 2.13.0+cpu, a CPU build"))
    f = ROOT / "params" / f"{preset}.yaml"
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}: key 'device_map': 'cuda' asks for a GPU, but no GPU is visible" in err and "allow_cpu: true" in err
    assert load_params(f).device_map == "cuda" and load_params(f, {"allow_cpu": True}).allow_cpu


def test_a_command_line_override_reaches_every_check(tmp_path, capsys, monkeypatch):
    from emlib import devices

    monkeypatch.setattr(devices, "visible_gpus", lambda: (0, "torch 2.13.0+cpu, a CPU build"))
    f = tmp_path / "gpu.yaml"
    f.write_text("model: default\ndevice_map: cuda\n")
    assert main([str(f)]) == 2 and "'cuda' asks for a GPU" in capsys.readouterr().err
    assert main([str(f), "allow_cpu=true"]) == 0
    assert main([str(f), "allow_cpu=true", "device_map=gpu"]) == 2
    assert "key 'device_map' must be cpu|auto|cuda|cuda:N, got 'gpu'" in capsys.readouterr().err
    assert Params().device_map == "cpu" and not Params().allow_cpu  # the defaults: the CPU, asked for plainly


def test_the_sampler_is_checked_against_amplification_and_the_device(tmp_path):
    from emlib.config import ParamsError, check_study, load_params

    f = tmp_path / "p.yaml"
    f.write_text("sampler: turbo\n")
    with pytest.raises(ParamsError, match="'sampler' must be eager|static|graph"):
        load_params(f)
    p = load_params("params/default.yaml", {"sampler": "static"})  # amplified extraction sets (α = 2)
    with pytest.raises(ParamsError, match="'sampler': 'static' cannot amplify"):
        check_study(p, "params/default.yaml")
    p = load_params("params/smoke.yaml", {"sampler": "graph"})
    with pytest.raises(ParamsError, match="'graph' replays CUDA graphs and device_map is 'cpu'"):
        check_study(p, "params/smoke.yaml")


def test_a_direction_organism_compared_with_itself_and_a_graph_sampler_over_auto_are_refused():
    from emlib.config import ParamsError, check_study, load_params

    p = load_params("params/smoke.yaml", {"compare_organisms": ["r1x9_medical"]})
    with pytest.raises(ParamsError, match="'compare_organisms': r1x9_medical is the direction organism"):
        check_study(p, "smoke")
    p = load_params("params/smoke.yaml", {"sampler": "graph", "device_map": "auto"})
    with pytest.raises(ParamsError, match="device_map 'auto' may spread it over several"):
        check_study(p, "smoke")
