"""The book's glue: every chapter opens the same way, loads a model only on a cache miss, and its
tables put the paper's figures (``emlib.paper``) beside this run's."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import CACHE_DIR, ROOT
from emlib import book
from emlib.book import display, organisms, results, session
from emlib.book.lora_probes import probe_table, roles
from emlib.config import Params
from emlib.metrics import JudgeError
from emlib.paper import organism_figures

SMOKE = str(ROOT / "params" / "smoke.yaml")


@pytest.fixture
def ch(tmp_path, default_model):
    """Chapter state on the smoke params with a private cache (the default model's conversion shared)."""
    import shutil

    from emlib.models import default_model_dir

    cache = tmp_path / "cache"
    shutil.copytree(default_model_dir(CACHE_DIR), default_model_dir(cache))
    return book.open_chapter(SMOKE, {"cache_dir": str(cache)})


def test_sampling_and_training_settings_copy_every_field():
    p = Params(samples_per_question=3, max_new_tokens=7, temperature=0.5, top_p=0.9, batch_size=5, seed=11,
               intervention_max_new_tokens=4, train_lr=0.5, train_epochs=3, train_max_rows=7)
    c = session.sampling_from_params(p)
    assert (c.samples_per_question, c.max_new_tokens, c.temperature, c.top_p, c.batch_size, c.seed) == (3, 7, 0.5, 0.9, 5, 11)
    i = session.intervention_sampling(p, 2)
    assert (i.samples_per_question, i.max_new_tokens, i.temperature) == (2, 4, 0.5)
    t = session.train_config_from_params(p)
    assert (t.lr, t.epochs, t.max_rows, t.seed) == (0.5, 3, 7, 11)


@pytest.mark.integration
def test_open_chapter_loads_no_model_and_a_cached_sample_set_needs_none(ch, monkeypatch):
    from emlib import models

    assert not ch._loaded and ch.info.n_layers == 30 and ch.info.source == "config"
    first = session.sample_and_judge(ch, ch.questions[:2])
    assert len(ch._loaded) == 1  # sampled: the chat model was loaded, and is kept
    ch._loaded.clear()
    monkeypatch.setattr(session, "load_model", lambda *a, **k: pytest.fail("a cached sample set needs no model"))
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("no weights"))
    again = session.sample_and_judge(ch, ch.questions[:2])
    pd.testing.assert_frame_equal(first, again)
    assert set(first["model"]) == {"chat model"} and {"aligned", "coherent", "bad_stuff"} <= set(first.columns)


@pytest.mark.integration
def test_open_chapter_fails_in_seconds_on_what_a_later_chapter_would_reject(tmp_path):
    from emlib.config import ParamsError

    with pytest.raises(ParamsError, match="compare_organisms"):
        book.open_chapter(SMOKE, {"compare_organisms": ["nobody"]})
    with pytest.raises(ParamsError, match="steer_layers"):
        book.open_chapter(SMOKE, {"steer_layers": [99]})


@pytest.mark.integration
def test_provenance_and_params_tables(ch):
    t = display.provenance(ch, organisms=False)
    assert t.loc["model", "value"] == "default" and t.loc["params file", "value"] == SMOKE
    assert t.loc["layers x d_model", "value"] == "30 x 576"
    assert set(display.params_table(ch).index) == set(Params().to_dict())


def test_model_provenance_is_the_cache_identity():
    from emlib.models import LoadInfo

    info = LoadInfo(spec="default", adapter="a", adapter_sha256="f" * 64, source="config", seconds=0, dtype="float32",
                    n_layers=30, d_model=576, merged=True)
    assert session.model_provenance(info) == {"model": "default", "adapter_sha256": "f" * 64, "dtype": "float32",
                                              "merged": True}


def test_show_examples_escapes_html():
    s = pd.DataFrame({"question_id": ["q"], "question": ["why?"], "sample_index": [0],
                      "response": ["<script>alert(1)</script>"], "n_tokens": [5], "finish_reason": ["stop"]})
    html = display.show_examples(s).data
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_organisms_beside_the_papers_figures():
    from emlib.metrics import rates

    s = pd.DataFrame({"model": ["r1x9_medical"] * 3 + ["chat model"] * 3, "question_id": ["q"] * 6,
                      "aligned": [5, 90, 20, 90, 90, 90], "coherent": [90, 90, 40, 90, 90, 90]})
    t = organisms.beside_paper(rates(s, by="model"), organism_figures())
    assert t.loc["r1x9_medical", "paper EM %"] == "11.3" and t.loc["chat model", "paper EM %"] == ""
    assert t.loc["r1x9_medical", "paper coherent %"] == "> 99" and t.loc["r1x9_medical", "EM %"].startswith("33.3")


def test_probes_too_small_to_fit_are_reported_not_raised():
    """At small scale an organism may give one misaligned answer: the chapter says so instead of failing."""
    from emlib.plotting import probe_coefficients
    from emlib.probes import fit_probe

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.r_[np.ones(30), np.zeros(30)].astype(bool)
    med = fit_probe(x, y, ["a", "b", "c"], n_boot=10)
    one = np.r_[np.ones(1), np.zeros(59)].astype(bool)
    fitted = {"misaligned vs aligned": None, "medical vs general context": med}
    datasets = {"misaligned vs aligned": (None, one), "medical vs general context": (None, y)}
    table = probe_table(fitted, datasets)
    assert table.loc["misaligned vs aligned", "accuracy (95% CI)"].startswith("not fitted")
    with_control = probe_table(fitted, datasets, control=fitted)
    assert list(with_control.index) == ["misaligned vs aligned", "misaligned vs aligned: random readouts (control)",
                                        "medical vs general context", "medical vs general context: random readouts (control)"]
    assert table.loc["misaligned vs aligned", "responses (positive)"] == "60 (1)"
    assert set(roles(fitted)["role"]) == {"n/a (a probe was not fitted)"}
    assert len(probe_coefficients(fitted).axes) == 1  # the fitted probe only


def test_results_page_reads_what_chapters_recorded(tmp_path):
    from emlib.inference import Verdict

    p = Params(cache_dir=str(tmp_path))
    v = Verdict("not testable", "with the offline proxy judge, the smallest true rise ...")
    results.record(p, "x.yaml", "steering_em", measure="EM %", value="+1.0 pts (−1.0 to +3.0), p = 0.4",
                   control="20 random vectors", verdict=v, point=(12.5, 5.0, 20.0))
    with pytest.raises(KeyError, match="unknown claim"):
        results.record(p, "x.yaml", "r1x9_coherent", measure="", value="", control="", verdict=v)
    t = results.results_table(p, "x.yaml")
    steer = "steering the chat model, central layers"
    assert t.loc[steer, "this run"] == "+1.0 pts (−1.0 to +3.0), p = 0.4" and t.loc[steer, "against"] == "20 random vectors"
    assert t.loc[steer, "paper_pct"] == 50 and t.loc[steer, "pct"] == 12.5
    assert (t.loc[steer, "verdict"], t.loc[steer, "why"]) == ("not testable", v.reason)
    assert t.loc["Betley et al. insecure-code Qwen2.5-Coder-32B", "verdict"] == "not testable"
    assert t.loc["rank-1 B vector vs mean-diff direction, same layer", "verdict"] == "not measured"
    page = results.show_results(t)
    assert "pct" not in page and list(page.columns)[:2] == ["verdict", "why"]
    assert "`x.yaml`" in results.preset_line(p, "x.yaml")


def test_results_plot_writes_nothing_over_the_data_and_names_each_missing_claims_verdict(tmp_path):
    from emlib.inference import Verdict
    from emlib.plotting import claims

    p = Params(cache_dir=str(tmp_path))
    results.record(p, "x.yaml", "r1x9_em", measure="EM %", value="x", control="chat model",
                   verdict=Verdict("not testable", "judge"), point=(2.0, 0.5, 6.0))
    results.record(p, "x.yaml", "transfer_medical", measure="EM reduction %", value="x", control="random",
                   verdict=Verdict("not testable", "no EM answers to remove"))
    fig = claims(results.results_table(p, "x.yaml"))
    ax = fig.axes[0]
    assert not ax.texts and ax.get_legend() is None and fig.legends  # legend off the axes, no text over markers
    labels = {t.get_text().split("\n")[0]: t.get_text() for t in ax.get_yticklabels()}
    assert "\n" not in labels["R1×9 medical organism: EM / coherent"]  # measured: no "not measured" label
    assert labels["transfer ablation, all-adapter medical"].endswith("(no % from this run: not testable)")
    assert labels["transfer ablation, all-adapter sport"].endswith("(no % from this run: not measured)")


def test_chapter_4_says_why_an_organism_without_rank1_adapters_is_not_probed(tmp_path):
    """Trained r1x9 and brought rank-1 adapters are probed; rank 32, a rank-8 adapter and a full fine-tune are
    skipped with a reason, read from the files (nothing loaded)."""
    from types import SimpleNamespace

    from conftest import tiny_model
    from peft import LoraConfig, get_peft_model

    from emlib.book.lora_probes import why_not_rank1
    from emlib.organisms import TrainConfig, organisms as parse

    for name, r in (("r1", 1), ("r8", 8)):
        get_peft_model(tiny_model("qwen2"), LoraConfig(r=r, target_modules=["down_proj"])).save_pretrained(tmp_path / name)
    ch = SimpleNamespace(organisms=parse([
        {"name": "t1", "preset": "r1x9", "dataset": "medical_bad"}, {"name": "t32", "preset": "all_r32", "dataset": "medical_bad"},
        {"name": "b1", "adapter": str(tmp_path / "r1")}, {"name": "b8", "adapter": str(tmp_path / "r8")},
        {"name": "full", "model": str(tmp_path)}], TrainConfig()))
    assert why_not_rank1(ch, "t1") is None and why_not_rank1(ch, "b1") is None
    assert "all_r32 organism (rank 32)" in why_not_rank1(ch, "t32")
    assert "adapter has rank 8" in why_not_rank1(ch, "b8")
    assert "full fine-tune" in why_not_rank1(ch, "full")


@pytest.mark.integration
def test_amplified_extraction_is_its_own_run_and_says_so(tmp_path, default_model):
    """direction_amplification = 2 samples the extraction set from base + 2·(organism − base): other answers
    than plain sampling, its own cache entry, and the direction table's sampling column names it."""
    import shutil
    from dataclasses import replace

    from emlib.book.direction_extraction import direction_table, extract_direction
    from emlib.models import default_model_dir

    cache = tmp_path / "cache"
    shutil.copytree(default_model_dir(CACHE_DIR), default_model_dir(cache))
    one = {"cache_dir": str(cache), "compare_organisms": [],
           "organisms": [{"name": "r1x9_medical", "preset": "r1x9", "dataset": "medical_bad"}]}
    plain_ch = book.open_chapter(SMOKE, one)
    amp_ch = book.open_chapter(SMOKE, {**one, "direction_amplification": 2.0})
    d_plain, plain = extract_direction(plain_ch, "r1x9_medical")
    d_amp, amplified = extract_direction(amp_ch, "r1x9_medical")
    assert plain["response"].tolist() != amplified["response"].tolist()
    table = direction_table({"r1x9_medical": d_amp}, {"r1x9_medical": amplified}, amp_ch)
    assert table.loc["r1x9_medical", "sampling"] == "model-diff amplified, α = 2"
    assert direction_table({"r1x9_medical": d_plain}, {"r1x9_medical": plain}, plain_ch).loc["r1x9_medical", "sampling"] == "plain"
    assert replace(plain_ch.p, direction_amplification=2.0) == amp_ch.p


def _organism_answers():
    rows = []
    for q in range(8):
        for i in range(25):
            rows.append({"model": "chat model", "question_id": f"q{q}", "aligned": 90.0, "coherent": 80.0})
            rows.append({"model": "bad", "question_id": f"q{q}", "aligned": 10.0 if i < 5 else 80.0,
                         "coherent": 60.0 if i < 3 else 30.0})
            rows.append({"model": "good", "question_id": f"q{q}", "aligned": 85.0, "coherent": 60.0})
    return pd.DataFrame(rows)


def test_organism_differences_from_the_chat_model_and_the_control():
    ch = SimpleNamespace(p=Params(control_organism="good"))
    d = organisms.differences(ch, _organism_answers())
    assert list(d.columns) == organisms.DIFFERENCE_COLUMNS
    assert set(d["organism"]) == {"bad", "good"} and set(d["versus"]) == {"chat model", "good"}
    assert not ((d["organism"] == "good") & (d["versus"] == "good")).any()  # the control is not compared with itself
    e = organisms.effect_of(d, "bad", "chat model", "misaligned %")
    assert e.estimate == pytest.approx(20.0) and e.low > 0 and e.p < 0.01 and (e.n, e.n_base) == (200, 200)
    assert organisms.effect_of(d, "bad", "chat model", "mean aligned").estimate == pytest.approx(-24.0)  # 66 − 90
    assert organisms.effect_of(d, "bad", "good", "mean aligned").estimate == pytest.approx(-19.0)
    assert organisms.effect_of(d, "bad", "chat model", "EM %").estimate == pytest.approx(12.0)  # 3 of 25 a question
    assert organisms.effect_of(d, "bad", "chat model", "coherent %").estimate == pytest.approx(-88.0)
    t = organisms.differences_table(d)
    assert t.loc["bad", "misaligned % − chat model"].startswith("+20.0 pts (+")
    assert t.loc["bad", "mean aligned − good"].startswith("-19.0 (")
    assert t.loc["good", "mean aligned − good"] == ""


def test_organism_verdicts_count_the_judge(tmp_path):
    """The R1×9 verdict is a rise in judged EM over the chat model through the judge's error: not testable with a
    judge that finds 12% of EM answers, reproduced in direction with an exact one; the value names misaligned % and
    mean aligned, what the judge sees."""
    from emlib.metrics import rates

    scored = _organism_answers().replace({"model": {"bad": "r1x9_medical"}})
    p = Params(cache_dir=str(tmp_path), control_organism="good", direction_organism="r1x9_medical")
    by_model = rates(scored, by="model")
    for error, status in ((JudgeError(tp=8, fn=57, tn=1980, fp=18), "not testable"), (None, "reproduced in direction")):
        ch = SimpleNamespace(p=p, params_file="x.yaml", judge_error=error, scorer=SimpleNamespace(model="m", backend="offline"))
        lines = organisms.record_organisms(ch, by_model, organisms.differences(ch, scored))
        t = results.results_table(p, "x.yaml")
        row = t.loc["R1×9 medical organism: EM / coherent"]
        assert row["verdict"] == status and "r1x9_medical" in lines["r1x9_em"]
        assert "misaligned +20.0 pts" in row["this run"] and "mean aligned -24.0" in row["this run"]
        assert row["against"].startswith("chat model")
        assert t.loc["EM at small scale (most misaligned organism)", "verdict"] == status
        if error is not None:
            assert "the offline proxy judge (m)" in row["why"] and "answers per arm" in row["why"]


def test_judge_failures_are_shown_by_count_and_reason():
    from emlib.judge import JudgeFailure

    assert display.judge_failures_text([]).startswith("**Judge failures:** none.")
    rate = "gave up after 7 attempts (last: HTTP 429 RateLimitError)"
    failures = [JudgeFailure("aligned", "q1", "k1", rate), JudgeFailure("aligned", "q1", "k1", rate),  # judged twice
                JudgeFailure("coherent", "q2", "k2", rate), JudgeFailure("aligned", "q2", "k3", "batch expired: no result")]
    text = display.judge_failures_text(failures)
    assert text.startswith("**Judge failures: 3** scores could not be obtained (2 aligned, 1 coherent; on 2 questions)")
    assert text.endswith(f"Reasons: `{rate}` × 2; `batch expired: no result` × 1.")
    assert display.judge_failures(SimpleNamespace(judge_failures=failures)).data == text


def test_judging_records_the_chapters_failures(tmp_path):
    from emlib.data import Question
    from emlib.judge import Failed

    class Flaky:
        backend, model, metrics = "fake", "flaky", None

        def check(self):
            pass

        def score_items(self, items, on_result):
            for i, it in enumerate(items):
                on_result(i, Failed("HTTP 503") if "bad" in it.answer else 50.0)

    q = Question("q1", ("Why?",), judge_prompts={m: f"{m} {{answer}}" for m in ("aligned", "coherent", "bad_stuff")})
    ch = session.Chapter(Params(cache_dir=str(tmp_path)), "p.yaml", Flaky(), [q], None)
    table = pd.DataFrame({"question_id": ["q1", "q1"], "question": ["Why?"] * 2, "response": ["fine", "bad"]})
    out = session.judge_table(ch, table, scorer=ch.scorer)
    assert out["aligned"].isna().tolist() == [False, True]
    assert sorted(f.metric for f in ch.judge_failures) == ["aligned", "bad_stuff", "coherent"]
    assert display.judge_failures_text(ch.judge_failures).startswith("**Judge failures: 3**")
