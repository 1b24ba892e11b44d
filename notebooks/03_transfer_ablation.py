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
# same norm changes EM by **less than 10%**. The compared organisms here are
# `compare_organisms`; a paper figure whose organism is not among them is left unmeasured
# (the results page says so).
#
# **Method.** Ablation is x' = x − v̂v̂ᵀx at every position of every forward pass while
# sampling (`emlib.interventions.ablate`, with nnsight), on the questions
# `intervention_questions` names (printed below): where the organisms are measurably
# misaligned, so that there is something to remove.
#
# - *single*: the vector from relative depth 0.5 at every layer, in the direction organism
#   and in each compared organism (transfer); *layer-wise*: each layer's own vector (the
#   direction organism only). Each, and each model unablated, answers every question
#   `ablation_samples_per_question` times.
# - *random units*: chapter 2's random vectors at that layer — anisotropy-matched ones
#   (the direction's construction with the labels permuted within question) and Gaussian
#   ones (in the transfer targets as many as `transfer_random_controls` and
#   `transfer_gaussian_controls` allow) — ablated the same way in every model, each on `control_samples_per_question`
#   answers a question, beside the single ablation's own unit sampled the same way. The
#   direction's rank among them is the test (`emlib.inference.rank_test`).
# - *the gap*: the chat model answers the same questions at the same setting (chapter 2's
#   unsteered run); an ablation that removes misalignment should raise mean aligned and
#   close the organism's gap to the chat model: (ablated − organism) / (chat − organism),
#   from per-question means, with an interval resampling answers within question.
#
# The paper's measure, EM reduction %, needs EM answers to remove; the table counts them.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # preset; intervention_questions, ablation_* and random_controls (emlib/config.py)
overrides = {}  # keys of emlib.config.Params on top, e.g. {"random_controls": 10}

# %%
from emlib import book, metrics, plotting
from emlib.book import display, steering, transfer_ablation as chapter
from emlib.book.direction_extraction import source_of
from emlib.models import single_direction_layer

ch = book.open_chapter(params_file, overrides)  # params, judge and model checked: bad input fails here, in seconds
p = ch.p
display.provenance(ch)  # with each organism's adapter, from chapter 1's cache

# %%
source, _ = source_of(ch)  # from chapter 2's cache
display.note(steering.where_text(ch))
display.note(f"Single-direction layer: {single_direction_layer(source.n_layers)} of {source.n_layers}; the direction "
             f"rests on {source.provenance['n_misaligned']} misaligned and {source.provenance['n_aligned']} aligned "
             f"answers. Random units (anisotropy-matched + Gaussian): "
             + ", ".join(f"{chapter.n_controls(ch, m)} + {chapter.n_controls(ch, m, 'Gaussian')} in {m}"
                         for m in [p.direction_organism, *p.compare_organisms]) + ".")

# %% [markdown]
# ## Ablation runs

# %%
scored = chapter.ablation_runs(ch, source)
verdicts = chapter.record_ablation(ch, scored)  # for the results page
chapter.effects_table(ch, scored)

# %% [markdown]
# Per quoted ablation: the change in mean aligned against the same model unablated
# (within question, with interval and permutation p), the share of the model's gap to
# the chat model it closes, the change in misaligned % and in coherent % beside (an
# ablation that breaks answers can also make them blander, which the judge may score as
# more aligned), the single ablation's rank-test p among each kind of random unit
# (one-sided: ablation should raise mean aligned), and the EM answers before and after.

# %%
for claim, v in verdicts.items():
    display.note(f"**{claim}:** {display.verdict_text(v)}")

# %%
strips, heads = chapter.strip_frames(ch, scored)
plotting.rank_strip(strips, heads, title=f"Ablating the {p.direction_organism} direction among random directions",
                    xlabels={"mean aligned": "change in mean aligned (ablated − unablated)",
                             "gap closed %": "share of the gap to the chat model closed (%)"});

# %% [markdown]
# Per model: blue, the single ablation's effect on all its answers with its 95% interval;
# grey strips, each random vector's ablation (one dot per vector); red diamond, the
# single ablation's own unit, measured as each random one is. Right: the same effects as
# a share of the model's gap to the chat model (0: nothing closed; 100%: as aligned as the
# chat model).
#
# ## Rates per model and ablation

# %%
quoted = scored[scored["arm"] != "unit"]
by_run = metrics.rates(quoted.assign(run=quoted["model"] + " · " + quoted["ablation"]), by="run",
                       judge_error=ch.judge_error)
metrics.format_rates(by_run)

# %% [markdown]
# ## Judge failures
#
# Scores this chapter asked the judge for and could not get after its retries, with the reason: their answers'
# scores are blank in the tables above, and they are not cached, so the next run asks for them again.

# %%
display.judge_failures(ch)
