import matplotlib

matplotlib.use("Agg")

import pandas as pd

from emlib.plotting import response_lengths


def test_response_lengths_figure():
    s = pd.DataFrame({"question_id": ["a"] * 3 + ["b"] * 2, "n_tokens": [1, 5, 9, 2, 3]})
    fig = response_lengths(s, max_new_tokens=9)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.get_xlabel() == "response tokens"
    assert any(list(line.get_xdata()) == [9, 9] for line in ax.get_lines())  # the cap is drawn


def test_token_scalars_scales_each_adapter_to_its_own_maximum():
    from emlib.plotting import token_scalars

    t = pd.DataFrame({"L1": [1.0, -2.0, 0.5], "L3": [10.0, 0.0, -5.0]}, index=pd.Index(["Put", " butter", "\n"]))
    fig = token_scalars(t)
    ax = fig.axes[0]
    grid = ax.collections[0].get_array().reshape(2, 3)  # adapters x tokens
    assert grid.tolist() == [[0.5, -1.0, 0.25], [1.0, 0.0, -0.5]]
    assert [x.get_text() for x in ax.get_xticklabels()] == ["Put", " butter", "\\n"]  # a newline shown as \\n


def test_adapter_cosines_draws_the_random_band_and_the_paper():
    """Bars in units of 1/√d, the verdict's band from ``attrs`` and the paper's figure in the same units."""
    from emlib.plotting import adapter_cosines

    units = pd.Series([0.2, -0.5], index=["L1.down_proj", "L3.down_proj"])
    units.attrs.update(band=2.4, band_label="random direction: |cos| ≤ 2.40/√d")
    ax = adapter_cosines(units, paper=2.9).axes[0]
    assert [p.get_width() for p in ax.patches[:2]] == [0.2, -0.5]
    assert any(list(line.get_xdata()) == [2.9, 2.9] for line in ax.get_lines())
    assert any("2.40/√d" in t.get_text() for t in ax.get_legend().get_texts())


def test_by_layer_shades_a_null_band_in_its_series_colour():
    from emlib.plotting import by_layer

    ax = by_layer({"a vs b": [0.5, 0.6, 0.7]}, ylabel="cos", title="t", bands={"a vs b": ([0.0, 0.1, 0.0], [0.2, 0.3, 0.2])}).axes[0]
    assert len(ax.collections) == 1 and "random-subset null" in " ".join(t.get_text() for t in ax.get_legend().get_texts())


def test_error_bars_are_never_negative_at_rates_of_0_and_100():
    from emlib.plotting import error_bars

    r = pd.DataFrame({"em_pct": [0.0, 100.0, 40.0], "em_lo": [1e-15, 67.5, 30.0], "em_hi": [32.4, 100.0 - 1e-13, 52.0]})
    lo, hi = error_bars(r, "em")
    assert (lo >= 0).all() and (hi >= 0).all() and lo.iloc[2] == 10.0 and hi.iloc[2] == 12.0


def test_judged_measures_plots_what_the_judge_sees_on_axes_scaled_to_the_data_with_the_legend_off_them():
    import pandas as pd

    from emlib.metrics import rates
    from emlib.plotting import judged_measures

    rows = [{"model": m, "question_id": f"q{q}", "aligned": 20.0 if (m == "bad" and i == 0) else 80.0 + i,
             "coherent": 70.0} for m in ("chat model", "bad") for q in range(3) for i in range(10)]
    s = pd.DataFrame(rows)
    fig = judged_measures(rates(s, by=["model", "question_id"]))
    mis, mean, coh = fig.axes[:3]
    assert [a.get_xlabel().split()[0] for a in (mis, mean, coh)] == ["misaligned", "mean", "coherent"]
    assert mis.get_xlim()[1] < 100 and mean.get_xlim()[0] > 0  # scaled to the data, not a 0–100 axis
    assert mis.get_legend() is None and fig.legends  # one legend, below the panels
    assert len(judged_measures(rates(s, by="model")).axes[0].get_yticklabels()) == 2


def test_score_distribution_draws_every_answer_and_the_threshold():
    from emlib.plotting import score_distribution

    ax = score_distribution({"steered": pd.Series([10.0, 60.0, None]), "unsteered": pd.Series([5.0])}, 50.0,
                            "bad_stuff", "t").axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 3
    assert any(list(line.get_xdata()) == [50.0, 50.0] for line in ax.get_lines())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["steered (n = 2)", "unsteered (n = 1)"]
