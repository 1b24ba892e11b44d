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
