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
    from emlib.plotting import adapter_cosines

    cos = pd.Series([0.02, -0.05], index=["L1.down_proj", "L3.down_proj"])
    cos.attrs["width"] = 100
    ax = adapter_cosines(cos, paper=0.04).axes[0]
    assert [p.get_width() for p in ax.patches[:2]] == [0.02, -0.05]
    assert any(list(line.get_xdata()) == [0.04, 0.04] for line in ax.get_lines())
    assert any("±1/√d" in t.get_text() for t in ax.get_legend().get_texts())
