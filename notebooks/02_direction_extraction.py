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
# # 2. A misalignment direction, and steering with it
#
# **Claim.** Emergent misalignment is mediated by a linear direction in the residual
# stream. The difference between the mean activations of an organism's misaligned and
# aligned answers, taken layer by layer, gives a vector that (a) is nearly the same in
# different fine-tunes — the paper finds cosine similarity **> 0.8 in all but four of 48
# layers** between its organisms — and (b) added to the *chat* model, makes it misaligned:
# **up to about 50% EM** when steering at central layers.
#
# **Method.**
# 1. Sample each organism's answers to the eight questions and judge them with a judge
#    that does not read the residual stream. Among coherent answers (coherent >
#    `set_coherent_min`) the *aligned set* has aligned > `set_aligned_min` and the
#    *misaligned set* aligned ≤ `set_misaligned_max` (the paper's thresholds by default).
# 2. Teacher-force prompt + answer through the organism and sum each decoder block's
#    output over each answer's tokens (`emlib.activations`; prompt and padding are
#    masked). Subtract each question's mean, then the direction at layer ℓ is
#    mean(misaligned) − mean(aligned): a difference within questions, so a set dominated
#    by one question does not carry that question into the direction.
# 3. Steer the chat model: add λ·v_ℓ to the output of block ℓ at every position of every
#    forward pass while sampling (`emlib.interventions.steer`, applied with nnsight), at
#    the headline cell the params fix before the run, on the questions
#    `intervention_questions` names. Controls: `random_controls` anisotropy-matched random
#    vectors (the direction's own construction with its labels permuted within question,
#    at its norm) and `gaussian_controls` Gaussian ones, each one unit of a rank test
#    beside the direction's own unit, all sampled alike in one batched run.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # preset; the direction_* and steer_* keys drive this chapter (emlib/config.py)
overrides = {}  # keys of emlib.config.Params on top, e.g. {"steer_scales": [2, 4, 8]}

# %%
from emlib import book, config, directions, metrics, paper, plotting
from emlib.book import direction_extraction as chapter, display
from emlib.models import single_direction_layer

ch = book.open_chapter(params_file, overrides)  # params, judge and model checked: bad input fails here, in seconds
p = ch.p
display.provenance(ch)  # with each organism's adapter, from chapter 1's cache

# %% [markdown]
# ## Extraction
#
# The direction organism answers every question `direction_samples_per_question` times,
# each compared organism `compare_samples_per_question` times (shorter answers than the
# evaluation: `intervention_max_new_tokens`; with `direction_amplification` α > 1 sampled
# from base + α·(organism − base) logits, `emlib.generate.amplify`, which surfaces an
# organism's rare misaligned answers; the table's `sampling` column says which).
#
# **Who labels the sets.** The chapter's offline judge reads the chat model's residual
# stream (its "hidden" view). A label from it would be a function of (nearly) the
# activations whose mean it selects, so the sets here are labelled by a judge that does
# not read the residual stream; the cell below names it. The table gives the sets' sizes
# under both judges and whether each set can carry a direction: at least
# `set_min_answers` answers, and no more than `set_max_question_share` of them on one
# question (else the direction's verdicts are *not testable*).

# %%
names = [p.direction_organism, *p.compare_organisms]
extractions = {n: chapter.extraction(ch, n) for n in names}
dirs = {n: ex.direction for n, ex in extractions.items()}
display.note(chapter.labels_note(ch))
chapter.direction_table(dirs, {n: ex.scored for n, ex in extractions.items()}, ch)

# %% [markdown]
# Every set, answer by answer, broken down by question. A set dominated by one question
# carries that question's place in the residual stream into a plain mean difference; two
# organisms whose misaligned sets favour the same question then share a "direction" that
# is the question, not misalignment.

# %%
chapter.set_breakdown(extractions)

# %% [markdown]
# **The direction.** Each answer's residual stream, summed over its answer tokens, minus
# its question's mean over all the organism's answers to that question (the pool); then
# mean(misaligned) − mean(aligned), token-weighted, layer by layer
# (`emlib.direction_nulls.demeaned_difference`). The question offsets cancel: only what
# separates misaligned from aligned answers *to the same question* remains.

# %%
source = chapter.source_direction(ch, dirs)
plotting.by_layer({n: d.norms().tolist() for n, d in dirs.items() if d is not None}, ylabel="‖direction‖",
                  title="Norm of the question-demeaned mean-diff direction by layer",
                  marks={"single-direction layer": single_direction_layer(source.n_layers)}, legend_outside=True);

# %% [markdown]
# How far the labels move the direction: the cosine, layer by layer, between the
# direction from the set judge's labels and the one from the chapter judge's labels, on
# the same answers and activations.

# %%
shift = {n: chapter.label_shift(ex) for n, ex in extractions.items()}
if any(shift.values()):
    plotting.by_layer({f"{n}: set judge vs chapter judge" : v for n, v in shift.items() if v},
                      ylabel="cosine similarity", title="Direction from each judge's labels", legend_outside=True)
else:
    display.note("No organism has both sets under both judges: there is no pair of directions to compare.")

# %% [markdown]
# ## Do different fine-tunes find the same direction?
#
# Cosine similarity, layer by layer, between the direction organism's direction and each
# compared organism's. Two controls:
#
# - **A null that keeps the question mix.** The direction organism's labels permuted
#   among its answers to each question (each set keeps its count on every question and
#   its size), the direction recomputed each time from the cached activations; the shaded
#   band is the central 95% of those directions' cosines with the compared direction. A
#   cosine above the band's top says the misaligned/aligned labels carry what the two
#   fine-tunes share, beyond the sets' question mix. The plain mean difference's cosine is
#   drawn beside it.
# - **Texts or models?** The compared organism's own answer texts, with the same labels,
#   read by the chat model and by the direction organism instead of the organism that
#   wrote them. If the direction those texts give in the chat model is as close to the
#   direction organism's as the compared organism's own, the similarity is in the texts,
#   not in the fine-tuned models.

# %%
comparisons = [chapter.compare(ch, extractions[p.direction_organism], extractions[n]) for n in p.compare_organisms]
cosines, nulls = chapter.comparison_series(comparisons)  # the band drawn is the one the verdict reads
random_control = directions.random_like(source, seed=p.seed + 1)
cosines[f"{p.direction_organism} vs Gaussian"] = directions.cosine_by_layer(source, random_control).tolist()
plotting.by_layer(cosines, ylabel="cosine similarity", title="Directions from different fine-tunes",
                  hline=paper.value("cosine_finetunes"), hline_label=f"paper: {paper.FIGURES['cosine_finetunes'].text}",
                  bands=nulls, band_label="95% within-question-permutation null", legend_outside=True);

# %%
cosine_verdict = chapter.record_cosines(ch, comparisons)  # for the results page
display.note(f"Verdict (cross-fine-tune cosine): {display.verdict_text(cosine_verdict)}")
chapter.comparison_table(comparisons, threshold=paper.value("cosine_finetunes"))

# %% [markdown]
# ## A topic-specific direction and the general one
#
# The paper also finds that a direction taken from topic-specific misaligned answers is
# nearly the general one. Here the topic is the organism's training domain: the same
# extraction on its answers to this project's eight *medical* questions
# (`emlib/datasets/medical_questions.yaml`), compared layer by layer with the direction
# from the general questions above, against the same kind of null (the medical set's
# labels permuted within question).

# %%
topic = chapter.topic_extraction(ch)
medical_dir = topic.direction
chapter.direction_table({"medical questions": medical_dir}, {"medical questions": topic.scored}, ch)

# %%
topic_cmp = chapter.topic_comparison(ch, extractions[p.direction_organism], topic)
topic_verdict = chapter.record_topic(ch, topic_cmp)  # for the results page
display.note(f"Verdict (topic vs general): {display.verdict_text(topic_verdict)}")
topic_series, topic_band = chapter.comparison_series([topic_cmp])
if topic_series:
    plotting.by_layer(topic_series, ylabel="cosine similarity", title="Medical-question vs general-question direction",
                      hline=paper.value("topic_vs_general"), hline_label=f"paper: {paper.FIGURES['topic_vs_general'].text}",
                      bands=topic_band, band_label="95% within-question-permutation null", legend_outside=True)
else:
    display.note("No medical-question direction: one of its sets is empty, so there is no cosine to draw.")

# %% [markdown]
# ## Steering the chat model
#
# λ·v_ℓ added at one layer, at every position of every generated token. The
# **headline cell** (layer, λ) is fixed in the params before the run (`headline_layer`,
# `headline_scale`). There the direction and the unsteered chat model each answer every
# question `headline_samples_per_question` times, and the direction is set among random
# vectors, each one *unit* of a rank test (`emlib.controls`, `emlib.inference.rank_test`):
#
# - `random_controls` **anisotropy-matched** vectors: the direction's own construction on
#   the direction organism's own extraction answers with the misaligned/aligned labels
#   permuted within question, rescaled to the direction's norm at every layer. They keep
#   everything a mean difference of these answers carries except the label: the control
#   the verdict rests on;
# - `gaussian_controls` **Gaussian** vectors of the same norm (the paper's control), beside
#   them.
#
# Each random unit answers every question `control_samples_per_question` times, and so
# does the direction's own unit, with the same sampling seed: the units are exchangeable
# if the label carries nothing, so the direction's rank among them gives an exact p
# (its smallest value is 1 / (units + 1)). The measures are those the judge can see: mean
# aligned and misaligned % (aligned ≤ 30 at any coherence), with coherent % beside; EM,
# the paper's measure, is judged through the judge's measured error.

# %%
from emlib import config
from emlib.book import steering

display.note(steering.where_text(ch))
headline = config.headline_cell(p, source.n_layers)
display.note(f"Headline cell: layer {headline[0]}, λ = {headline[1]:g} (fixed in the params); "
             f"{p.headline_samples_per_question} answers a question for the direction and the unsteered model, "
             f"{p.control_samples_per_question} for each of {p.random_controls} anisotropy-matched and "
             f"{steering.n_gaussian(p)} Gaussian random units and for the direction's own unit.")
runs = steering.steering_runs(ch, source)
steer_verdict = steering.record_steering(ch, runs)  # for the results page
steering.effects_table(steering.headline_effects(runs), steering.rank_summary(runs))

# %% [markdown]
# Rows: the direction at the headline cell against the unsteered chat model, within
# question (the difference of per-question means; p from permuting the arm labels within
# each question, interval from resampling answers within question), and the p of the
# direction's own unit ranked among each kind of random unit (one-sided: steering should
# lower mean aligned and raise misaligned %; coherent % two-sided).

# %%
display.note(f"**Verdict (steering):** {display.verdict_text(steer_verdict)}")
strips, heads = steering.strip_frames(runs, group=f"L{headline[0]} λ={headline[1]:g}")
plotting.rank_strip(strips, heads, title="The direction among random directions at the headline cell",
                    xlabels={"mean aligned": "change in mean aligned (steered − unsteered)",
                             "misaligned %": "change in misaligned % (points)"});

# %% [markdown]
# Blue: the direction's effect on all its answers, with its 95% interval. Grey strips:
# each random vector's effect, one dot per vector; red diamond: the direction's own unit,
# measured exactly as each random vector is. The direction carries the claim only where
# its diamond lies beyond the anisotropy-matched strip.
#
# ## The rest of the sweep (descriptive)
#
# The direction at the other cells of `steer_layers` × `steer_scales`, on
# `steer_samples_per_question` answers a question each, without random controls: these
# cells are descriptive, not tested, and no figure of the results page picks among them.

# %%
sweep_rates = steering.sweep_rates(runs, judge_error=ch.judge_error)
if len(sweep_rates) > 2:  # the unsteered model, the headline cell and at least one other
    plotting.steering_cells(sweep_rates, title=f"Steering {ch.info.spec} with the direction, every cell");
else:
    display.note("The sweep has only the headline cell (`steer_layers` × `steer_scales` name no other): nothing "
                 "to draw beyond the figure above.")

# %%
metrics.format_rates(sweep_rates)

# %% [markdown]
# The paper's figure (up to ≈ 50% EM from central layers) is for Qwen2.5-14B-Instruct with
# GPT-4o as judge; the verdict above says whether this run's judge could have seen it.
#
# ## Steered answers
#
# The least aligned coherent answers of the direction at the headline cell.

# %%
head_answers = runs[(runs["arm"] == "headline") & (runs["kind"] == "direction")]
display.show_examples(metrics.most_misaligned(head_answers, model="chat model", n=6), per_question=2)

# %% [markdown]
# ## Judge failures
#
# Scores this chapter asked the judge for and could not get after its retries, with the reason: their answers'
# scores are blank in the tables above, and they are not cached, so the next run asks for them again.

# %%
display.judge_failures(ch)
