import pandas as pd

from emlib import book
from emlib.book import model_provenance, params_table, provenance_table, sampling_from_params, show_examples
from emlib.config import Params
from emlib.models import LoadInfo

INFO = LoadInfo(spec="default", adapter=None, adapter_sha256=None, source="gguf", seconds=1.0, dtype="float32",
                n_layers=30, d_model=576)


def test_sampling_from_params_copies_every_field():
    p = Params(samples_per_question=3, max_new_tokens=7, temperature=0.5, top_p=0.9, batch_size=5, seed=11)
    c = sampling_from_params(p)
    assert (c.samples_per_question, c.max_new_tokens, c.temperature, c.top_p, c.batch_size, c.seed) == (3, 7, 0.5, 0.9, 5, 11)


def test_provenance_and_params_tables():
    t = provenance_table(Params(), INFO, "params/x.yaml")
    assert t.loc["model", "value"] == "default" and t.loc["params file", "value"] == "params/x.yaml"
    assert model_provenance(INFO) == {"model": "default", "adapter_sha256": None, "dtype": "float32"}
    assert set(params_table(Params()).index) == set(Params().to_dict())


def test_show_examples_escapes_html():
    s = pd.DataFrame({"question_id": ["q"], "question": ["why?"], "sample_index": [0],
                      "response": ["<script>alert(1)</script>"], "n_tokens": [5], "finish_reason": ["stop"]})
    html = show_examples(s).data
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_beside_paper_and_most_misaligned():
    from emlib.book import PAPER_ORGANISMS, beside_paper, most_misaligned
    from emlib.metrics import rates

    s = pd.DataFrame({"model": ["r1x9_medical"] * 3 + ["chat model"] * 3, "question_id": ["q"] * 6,
                      "aligned": [5, 90, 20, 90, 90, 90], "coherent": [90, 90, 40, 90, 90, 90]})
    t = beside_paper(rates(s, by="model"), PAPER_ORGANISMS)
    assert t.loc["r1x9_medical", "paper EM %"] == "11.3" and t.loc["chat model", "paper EM %"] == ""
    assert t.loc["r1x9_medical", "EM %"].startswith("33.3")
    worst = most_misaligned(s, "r1x9_medical", n=5)
    assert worst["aligned"].tolist() == [5, 90]  # the incoherent one (coherent 40) is left out


def test_train_config_from_params():
    from emlib.book import train_config_from_params

    c = train_config_from_params(Params(train_lr=0.5, train_epochs=3, train_max_rows=7, seed=4))
    assert (c.lr, c.epochs, c.max_rows, c.seed) == (0.5, 3, 7, 4)


def test_probes_too_small_to_fit_are_reported_not_raised():
    """At small scale an organism may give one misaligned answer: the chapter says so instead of failing."""
    import numpy as np

    from emlib.probes import fit_probe
    from emlib.plotting import probe_coefficients

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), np.r_[np.ones(30), np.zeros(30)].astype(bool)
    med = fit_probe(x, y, ["a", "b", "c"], n_boot=10)
    one = np.r_[np.ones(1), np.zeros(59)].astype(bool)
    probes = {"misaligned vs aligned": None, "medical vs general context": med}
    datasets = {"misaligned vs aligned": (None, one), "medical vs general context": (None, y)}
    table = book.probe_table(probes, datasets)
    assert table.loc["misaligned vs aligned", "accuracy (95% CI)"].startswith("not fitted")
    assert table.loc["misaligned vs aligned", "responses (positive)"] == "60 (1)"
    roles = book.adapter_roles(probes)
    assert list(roles.index) == ["a", "b", "c"] and set(roles["role"]) == {"n/a (a probe was not fitted)"}
    assert roles["misalignment coef"].isna().all() and roles.attrs["summary"]
    assert len(probe_coefficients(probes).axes) == 1  # the fitted probe only
    assert book.adapter_roles({"misaligned vs aligned": None, "medical vs general context": None}).attrs["summary"] == "no probe fitted"
