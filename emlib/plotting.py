"""Figures for the book. Each returns a matplotlib Figure (the notebook displays it).

- ``response_lengths``, ``judge_sources``: chapter 00.
- ``loss_curves``, ``judged_measures``: chapter 1 (``judged_measures`` also chapter 0).
- ``score_distribution``: chapter 5.
- ``by_layer``, ``steering_cells``, ``rank_strip``: chapter 2.
- ``rank_strip``: chapter 3 (and 5).
- ``probe_coefficients``, ``adapter_cosines``, ``token_scalars`` (and ``by_layer``): chapter 4.
- ``claims``: the results page.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure



def error_bars(rates: pd.DataFrame, metric: str) -> list[pd.Series]:
    """Lower and upper error-bar lengths of ``metric`` (columns ``{metric}_pct``, ``_lo``, ``_hi``), never negative:
    an interval's end can sit a rounding error inside its point (a rate of 0 or 100%), which matplotlib refuses."""
    pct = rates[f"{metric}_pct"]
    return [(pct - rates[f"{metric}_lo"]).clip(lower=0), (rates[f"{metric}_hi"] - pct).clip(lower=0)]

def response_lengths(samples: pd.DataFrame, max_new_tokens: int, title: str = "Response length") -> Figure:
    """Per-question distribution of response length (tokens) with the ``max_new_tokens`` cap marked.

    ``samples``: the table from ``emlib.generate.sample_responses`` (needs ``question_id``, ``n_tokens``).
    """
    fig, ax = plt.subplots(figsize=(8, 0.45 * samples["question_id"].nunique() + 1.2))
    order = list(dict.fromkeys(samples["question_id"]))
    sns.boxplot(data=samples, y="question_id", x="n_tokens", order=order, color="#cfe0f3", fliersize=0, ax=ax)
    sns.stripplot(data=samples, y="question_id", x="n_tokens", order=order, size=3, color="#1f4e79", alpha=0.6, ax=ax)
    ax.axvline(max_new_tokens, ls="--", color="#b03a2e", lw=1)
    ax.text(max_new_tokens, -0.6, " max_new_tokens", color="#b03a2e", va="bottom", ha="right", fontsize=8)
    ax.set(xlabel="response tokens", ylabel="", title=title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def loss_curves(curves: dict[str, list[float]], title: str = "Training loss (assistant tokens)") -> Figure:
    """One line per organism: mean next-token loss per optimiser step (chapter 1)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=name, lw=1.5)
    ax.set(xlabel="optimiser step", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    sns.despine(fig)
    fig.tight_layout()
    return fig


JUDGED_MEASURES = (("misaligned", "misaligned % (aligned ≤ 30)"), ("aligned", "mean aligned score"),
                   ("coherent", "coherent % (coherent > 50)"))


def judged_measures(rates: pd.DataFrame, title: str = "What the judge sees") -> Figure:
    """Misaligned %, mean aligned and coherent % with 95% intervals (the measures the judge can see, which carry
    chapters 0–1's comparisons), as points on axes scaled to the data. ``rates``: ``emlib.metrics.rates`` by
    ``"model"`` (one row per model), ``"question_id"`` (one per question) or ``["model", "question_id"]`` (one
    row per question, one colour per model; the legend below the panels). Chapters 0 and 1."""
    r = rates.reset_index()
    rows_key = "question_id" if "question_id" in r else "model"
    if "model" not in r or rows_key == "model":
        r["series"] = ""
    else:
        r["series"] = r["model"]
    rows = list(dict.fromkeys(r[rows_key]))
    series = list(dict.fromkeys(r["series"]))
    palette = sns.color_palette("deep", len(series)) if any(series) else ["#4c72b0"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.32 * len(rows) * max(1, len(series) / 2) + 1.8), sharey=True)
    step = 0.8 / len(series)
    for ax, (metric, label) in zip(axes, JUDGED_MEASURES):
        point = "aligned_mean" if metric == "aligned" else f"{metric}_pct"
        lo, hi = ("aligned_lo", "aligned_hi") if metric == "aligned" else (f"{metric}_lo", f"{metric}_hi")
        for k, name in enumerate(series):
            sub = r[r["series"] == name].set_index(rows_key).reindex(rows)
            y = [i - 0.4 + step * (k + 0.5) for i in range(len(rows))]
            err = [(sub[point] - sub[lo]).fillna(0).clip(lower=0), (sub[hi] - sub[point]).fillna(0).clip(lower=0)]
            ax.errorbar(sub[point], y, xerr=err, fmt="o", ms=4, lw=1, capsize=2, color=palette[k], label=name or None)
        low, high = r[lo].min(skipna=True), r[hi].max(skipna=True)
        low = min(low, r[point].min()) if pd.notna(low) else r[point].min()
        high = max(high, r[point].max()) if pd.notna(high) else r[point].max()
        pad = max(2.0, 0.08 * (high - low))
        ax.set(xlabel=label, xlim=(max(0.0, low - pad) if metric == "aligned" else 0.0, min(100.0, high + pad)))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), rows)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    if any(series):
        fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(series), 5), fontsize=8,
                   frameon=False)
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.3 / fig.get_figheight())
    return fig


def by_layer(series: dict[str, list[float]], ylabel: str, title: str, marks: dict[str, int] | None = None,
             hline: float | None = None, hline_label: str = "",
             bands: dict[str, tuple[list[float], list[float]]] | None = None, band_label: str = "95% random-subset null",
             legend_outside: bool = False) -> Figure:
    """One line per name over layers (direction norms, cosines; chapters 2 and 4).

    ``series``: name -> one value per layer; ``marks``: label -> layer drawn as a vertical line;
    ``hline``: a reference level (e.g. the paper's threshold); ``bands``: name of a series -> (low, high)
    per layer, drawn as a shaded band in that series' colour, labelled "<name>: ``band_label``" (chapter 2's
    null); ``legend_outside``: the legend right of the axes, off the data.
    """
    fig, ax = plt.subplots(figsize=(11, 3.8) if legend_outside else (8, 3.6))
    for name, values in series.items():
        (line,) = ax.plot(range(len(values)), values, marker="o", ms=3, lw=1.5, label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(range(len(lo)), lo, hi, color=line.get_color(), alpha=0.15, lw=0,
                            label=f"{name}: {band_label}")
    for label, layer in (marks or {}).items():
        ax.axvline(layer, color="grey", ls=":", lw=1)
        ax.text(layer, ax.get_ylim()[1], f" {label}", fontsize=8, va="top", color="grey")
    if hline is not None:
        ax.axhline(hline, color="#c44e52", ls="--", lw=1, label=hline_label or None)
    ax.set(xlabel="layer (block output)", ylabel=ylabel, title=title)
    if legend_outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    sns.despine(fig)
    fig.tight_layout()
    return fig


KIND_STYLE = {"anisotropy-matched": {"color": "#8c8c8c", "marker": "o"},
              "Gaussian": {"color": "#c7c7c7", "marker": "s"}}


def rank_strip(units: pd.DataFrame, heads: pd.DataFrame, title: str, xlabels: dict[str, str] | None = None) -> Figure:
    """The direction beside its random units, one panel per measure (chapters 2, 3 and 5): for each group (a cell,
    a model), a row with the direction's effect on all its answers and its 95% interval (blue), and one strip row
    per kind of random unit (each vector's effect on its own answers), with the direction's own unit, measured as
    each random one is, as a red diamond on each strip: its rank among them is the rank test's.

    ``units``: columns ``group``, ``measure``, ``kind`` ("direction" or a kind of ``KIND_STYLE``), ``effect``;
    ``heads``: columns ``group``, ``measure``, ``estimate``, ``low``, ``high``, ``n``. ``xlabels``: measure -> axis
    label. Categorical rows; the legend sits below the axes, off the data.
    """
    measures = list(dict.fromkeys(heads["measure"]))
    groups = list(dict.fromkeys(heads["group"]))
    kinds = [k for k in KIND_STYLE if k in set(units["kind"])]
    rows = [(g, r) for g in groups for r in ["direction", *kinds]]
    fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 0.43 * len(rows) + 1.9), squeeze=False,
                             sharey=True)
    for ax, m in zip(axes[0], measures):
        for y, (g, r) in enumerate(rows):
            if r == "direction":
                h = heads[(heads["group"] == g) & (heads["measure"] == m)]
                if len(h):
                    h = h.iloc[0]
                    err = [[max(0, h["estimate"] - h["low"])], [max(0, h["high"] - h["estimate"])]]
                    ax.errorbar([h["estimate"]], [y], xerr=err, fmt="o", color="#4c72b0", capsize=3,
                                label="direction, all its answers (95% CI)")
                continue
            u = units[(units["group"] == g) & (units["measure"] == m)]
            c = u[u["kind"] == r]["effect"]
            jitter = (pd.Series(range(len(c))) % 3 - 1).to_numpy() * 0.12
            ax.scatter(c, [y] * len(c) + jitter, s=18, alpha=0.8, label=f"random units: {r}", **KIND_STYLE[r])
            d = u[u["kind"] == "direction"]["effect"]
            if len(d):
                ax.scatter(d, [y] * len(d), marker="D", s=40, color="#c44e52", zorder=3,
                           label="direction's unit (as many answers as each random one)")
        ax.axvline(0, color="black", lw=0.8)
        ax.set(xlabel=(xlabels or {}).get(m, f"{m}: change"), title=m)
        ax.grid(axis="x", alpha=0.3)
    labels = [f"{g} · {'direction' if r == 'direction' else r}" for g, r in rows]
    axes[0][0].set_yticks(range(len(rows)), labels)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    keep = dict(zip(names, handles))
    fig.legend(keep.values(), keep.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout(rect=(0, 0.1 + 0.02 * len(keep) / 2, 1, 1))
    return fig


def steering_cells(rates: pd.DataFrame, title: str = "The direction at every cell of the sweep") -> Figure:
    """The descriptive sweep (chapter 2): mean aligned (95% CI) and misaligned % (Wilson 95% CI) of the direction
    at each (layer, λ), λ on a categorical axis, one colour per layer; the unsteered chat model as a dotted line.
    ``rates``: ``emlib.metrics.rates(runs, by=["vector", "layer", "scale"])``; the legend sits right of the axes."""
    r = rates.reset_index()
    base, steered = r[r["vector"] == "none"], r[r["vector"] == "mean-diff"]
    scales = sorted(steered["scale"].unique())
    pos = {s: i for i, s in enumerate(scales)}
    layers = sorted(steered["layer"].unique())
    palette = dict(zip(layers, sns.color_palette("deep", len(layers))))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), squeeze=False)
    panels = (("aligned_mean", "aligned_lo", "aligned_hi", "mean aligned"),
              ("misaligned_pct", "misaligned_lo", "misaligned_hi", "misaligned %"))
    for ax, (point, lo, hi, label) in zip(axes[0], panels):
        for k, layer in enumerate(layers):
            sub = steered[steered["layer"] == layer].sort_values("scale")
            x = [pos[s] + (k - (len(layers) - 1) / 2) * 0.08 for s in sub["scale"]]
            err = [(sub[point] - sub[lo]).clip(lower=0), (sub[hi] - sub[point]).clip(lower=0)]
            ax.errorbar(x, sub[point], yerr=err, marker="o", ls="-", color=palette[layer], capsize=2,
                        label=f"layer {layer} (n = {', '.join(str(n) for n in sub['n'])})")
        if not base.empty:
            ax.axhline(float(base[point].iloc[0]), color="black", lw=1, ls=":",
                       label=f"unsteered (n = {int(base['n'].iloc[0])})")
        ax.set_xticks(range(len(scales)), [f"{s:g}" for s in scales])
        ax.set(xlabel="λ (multiple of the direction)", ylabel=label, ylim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def probe_coefficients(results: dict, title: str = "Probe coefficients per adapter",
                       significant: dict[str, pd.Series] | None = None) -> Figure:
    """Standardised logistic-regression coefficients with bootstrap 95% CIs, one panel per probe (chapter 4).

    ``results``: probe name -> ``emlib.probes.ProbeResult`` (None: not fitted, left out); ``significant``: probe
    name -> boolean Series by adapter, the coefficients drawn blue (chapter 4: Holm-adjusted p < α over all
    coefficient tests); without it, those whose 95% CI excludes 0.
    """
    results = {name: r for name, r in results.items() if r is not None}
    if not results:
        return _note("No probe could be fitted: too few answers in a class (see the table above).")
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 0.4 * len(next(iter(results.values())).coefficients) + 1.8),
                             sharey=True, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        c = r.coefficients
        err = [c["coef"] - c["lo"], c["hi"] - c["coef"]]
        marked = (significant[name].reindex(c.index).fillna(False) if significant and name in significant
                  else (c["lo"] > 0) | (c["hi"] < 0))
        colors = ["#4c72b0" if m else "#b0b0b0" for m in marked]
        ax.barh(range(len(c)), c["coef"], xerr=err, color=colors, error_kw={"lw": 1, "capsize": 3})
        ax.axvline(0, color="black", lw=0.8)
        ax.set(title=f"{name}\nAUROC {r.auroc:.2f} ({r.auroc_ci[0]:.2f}–{r.auroc_ci[1]:.2f}), n = {r.n}",
               xlabel="standardised coefficient")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(c)), list(c.index))
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def claims(table: pd.DataFrame, title: str = "This run beside the paper") -> Figure:
    """The results page's percentage claims: this run's figure with its 95% CI (point) and the paper's (diamond).
    A claim without a percentage from this run says why in its axis label (its verdict: "not measured" only when
    no chapter recorded it), never over the data; the legend sits below the axes.

    ``table``: ``emlib.book.results_table`` (rows with a ``paper_pct``; ``pct`` may be missing).
    """
    t = table[table["paper_pct"].notna()]
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(t) + 2.0))
    y = list(range(len(t)))
    m = t["pct"].notna().to_numpy()
    err = [(t["pct"] - t["lo"]).fillna(0).clip(lower=0)[m], (t["hi"] - t["pct"]).fillna(0).clip(lower=0)[m]]
    if m.any():
        ax.errorbar(t["pct"][m], [i for i, ok in zip(y, m) if ok], xerr=err, fmt="o", color="#4c72b0", ms=5, lw=1,
                    capsize=3, label="this run (95% interval)")
    ax.scatter(t["paper_pct"], y, marker="D", color="#c44e52", zorder=3, label="paper (Qwen2.5-14B)")
    labels = [claim if pd.notna(pct) else f"{claim}\n(no % from this run: {status})"
              for claim, pct, status in zip(t.index, t["pct"], t.get("verdict", pd.Series("", index=t.index)))]
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="% (EM rate, or EM reduction for the ablation rows)", title=title)
    ax.grid(axis="x", alpha=0.3)
    sns.despine(fig)
    fig.tight_layout()
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.3 / fig.get_figheight())
    return fig


def adapter_cosines(units: pd.Series, paper: float, title: str = "B vectors vs the mean-diff direction") -> Figure:
    """cos(B, mean-diff direction at the adapter's layer)·√d per rank-1 adapter (units of 1/√d, the sd of a random
    direction's cosine), the paper's figure in the same units as a line, and the null band the verdict uses
    (chapter 4). ``units``: index adapter name, values cos·√d; ``attrs["band"]`` (half-width, same units) and
    ``attrs["band_label"]`` draw the band. The legend sits below the axes, off the data."""
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(units) + 2.4))
    ax.barh(range(len(units)), units.values, color="#4c72b0", label="this run")
    band = units.attrs.get("band")
    if band:
        ax.axvspan(-band, band, color="grey", alpha=0.2, label=units.attrs.get("band_label", "null band"))
    ax.axvline(paper, color="#c44e52", ls="--", lw=1, label=f"paper: {paper:.1f}/√d")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(units)), list(units.index))
    ax.invert_yaxis()
    reach = 1.15 * max(abs(paper), band or 0, float(units.abs().max()))
    ax.set(xlabel="cosine × √d (units of 1/√d)", xlim=(-reach, reach), title=title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def token_scalars(scalars: pd.DataFrame, title: str = "A·x per answer token", max_tokens: int = 48) -> Figure:
    """Heatmap of each adapter's scalar A·x (rows) over the answer's tokens (columns), each adapter
    scaled by its largest |A·x| so that quiet and loud adapters share one colour scale (chapter 4).
    ``scalars``: ``emlib.probes.token_scalars`` ([n_tokens, n_adapters], index the token texts)."""
    s = scalars.iloc[:max_tokens]
    norm = s / s.abs().max().replace(0, 1)
    fig, ax = plt.subplots(figsize=(min(16, 0.28 * len(s) + 2.5), 0.35 * s.shape[1] + 1.8))
    sns.heatmap(norm.T, cmap="RdBu_r", center=0, vmin=-1, vmax=1, ax=ax,
                cbar_kws={"label": "A·x / max |A·x| of the adapter"})
    ax.set_xticks([i + 0.5 for i in range(len(s))], [repr(t)[1:-1] for t in s.index], rotation=90, fontsize=7)
    ax.set(xlabel="answer token", ylabel="adapter", title=title)
    fig.tight_layout()
    return fig


def judge_sources(rates: pd.DataFrame, title: str = "The judge against a careful reader, per source") -> Figure:
    """Per held-out source (one model and setting): the judge's coherent % and misaligned % against the
    reader's, with the y = x line and a ±10-point band (chapter 0). ``rates``: ``emlib.judge_check.source_rates``."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, name in zip(axes, ("coherent", "misaligned")):
        x, y = rates[f"{name} % reader"], rates[f"{name} % judge"]
        ax.fill_between([0, 100], [-10, 90], [10, 110], color="grey", alpha=0.15, label="±10 points")
        ax.plot([0, 100], [0, 100], color="black", lw=0.8)
        ax.scatter(x, y, s=12 + rates["answers"] / 3, color="#4c72b0", alpha=0.8, label="one source")
        ax.set(xlim=(0, 100), ylim=(0, 100), xlabel=f"{name} % (reader)", ylabel=f"{name} % (judge)",
               title=f"{name}: worst gap {rates[f'{name} gap'].abs().max():.0f} points")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def score_distribution(scores: dict[str, pd.Series], threshold: float, xlabel: str, title: str) -> Figure:
    """One row of dots per group (name -> scores), each dot an answer, with the ``threshold`` a classification
    uses as a dashed line: where the answers sit, even when none crosses it (chapter 5's bad_stuff among
    aligned-classified answers). The legend-free rows are labelled with their answer counts."""
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(scores) + 1.8))
    for i, (name, v) in enumerate(scores.items()):
        v = pd.Series(v).dropna()
        jitter = (pd.Series(range(len(v))) % 7 - 3) * 0.06
        ax.scatter(v.to_numpy(), i + jitter.to_numpy(), s=10, alpha=0.5, color="#4c72b0")
    ax.axvline(threshold, color="#c44e52", ls="--", lw=1)
    ax.set_yticks(range(len(scores)), [f"{name} (n = {pd.Series(v).notna().sum()})" for name, v in scores.items()])
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, xlim=(-2, 102), title=title)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def _note(text: str) -> Figure:
    """A small figure that says why there is nothing to plot (the book keeps its figure slot)."""
    fig, ax = plt.subplots(figsize=(7, 1.2))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10)
    ax.set_axis_off()
    return fig
