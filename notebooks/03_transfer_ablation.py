# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Ablating the direction, in its own organism and in others
#
# **Claim.** If one direction mediates emergent misalignment, projecting it out of the
# residual stream should remove misalignment — not only from the organism it came from,
# but from other fine-tunes too. The paper ablates the R1×9 medical organism's layer-24
# direction (relative depth 0.5) at every layer of two rank-32 all-adapter organisms and
# reports **EM −90% (medical) and −78% (extreme sports)**, while a random vector of the
# same norm changes EM by **less than 10%**. The default book's compared organisms are
# `compare_organisms` (an all-adapter medical and an R1×9 finance organism), so the sport
# figure is left unmeasured there; add an extreme-sports organism to measure it.
#
# **Method.** Ablation is x' = x − v̂v̂ᵀx at every position of every forward pass while
# sampling (`emlib.interventions.ablate`, with nnsight):
#
# - *layer-wise*: each layer's own mean-diff vector at that layer (source organism only);
# - *single*: the vector from relative depth 0.5 at every layer (source and transfer);
# - *random*: `random_controls` Gaussian vectors with the norm of that vector, at every
#   layer of the source organism — the control that separates direction from norm.
#
# Each model answers the evaluation questions `ablation_samples_per_question` times, with answers
# as long as in chapter 2's runs (`intervention_max_new_tokens`; the unablated baseline is
# sampled the same way, so it can differ a little from chapter 1), and is judged as
# before. The EM reduction is 1 − EM after / EM before, with a bootstrap 95% interval
# over responses.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # preset; direction_organism, compare_organisms, random_controls (emlib/config.py)
overrides = {}  # keys of emlib.config.Params on top, e.g. {"random_controls": 10}

# %%
from emlib import book, metrics, plotting
from emlib.book import display, transfer_ablation as chapter
from emlib.book.direction_extraction import source_of
from emlib.models import single_direction_layer

ch = book.open_chapter(params_file, overrides)  # params, judge and model checked: bad input fails here, in seconds
p = ch.p
display.provenance(ch)  # with each organism's adapter, from chapter 1's cache

# %%
source, _ = source_of(ch)  # from chapter 2's cache
print(f"single-direction layer: {single_direction_layer(source.n_layers)} of {source.n_layers}; "
      f"direction from {source.provenance['n_misaligned']} misaligned vs {source.provenance['n_aligned']} aligned answers")

# %% [markdown]
# ## Ablation runs

# %%
scored = chapter.ablation_runs(ch, source)
table = chapter.ablation_table(ch, scored)
chapter.record_ablation(ch, table, scored)  # for the results page
chapter.format_ablation(table)

# %%
plotting.ablation_bars(table, title=f"EM reduction after ablating the {p.direction_organism} direction");

# %% [markdown]
# Blue bars: the direction; grey bars: same-norm random vectors; diamonds: the paper.
# A reduction is not estimated when the model gave fewer than five EM answers before
# ablation: with one or two, a single answer swings the ratio from −100% to 100%. With the
# default preset's 64 answers per model and EM rates of a few percent this is the common
# case at small scale; the mean scores below still show which way the ablation moves.
#
# ## EM and coherence, before and after

# %%
by_run = metrics.rates(scored.assign(run=scored["model"] + " · " + scored["ablation"]), by="run", judge_error=ch.judge_error)
plotting.em_by_model(by_run.rename_axis("model"), title="EM and coherence per model and ablation");

# %% [markdown]
# Mean judge scores move even where EM counts are too small to: a misalignment direction
# that matters should raise the mean `aligned` score when ablated, and a random one should
# not. Below, each ablation against the same model unablated and, for the source organism,
# against its random ablations pooled, on EM %, misaligned % and the mean aligned score
# (paired cluster-bootstrap intervals over questions). Read the mean coherence beside it:
# an ablation that makes answers less coherent can also make them blander, which the
# judge may score as more aligned.

# %%
chapter.ablation_effects(scored, judge_error=ch.judge_error)

# %%
metrics.mean_scores(scored, by=["model", "ablation"])
