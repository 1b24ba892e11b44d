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
# # 1. Model organisms of emergent misalignment
#
# **Claim.** Fine-tuning a chat model on a narrow harmful task — here, confident but
# subtly harmful medical advice — makes it misaligned on *unrelated* open questions.
# The paper's minimal organism, nine rank-1 LoRA adapters on the MLP down-projections of
# Qwen2.5-14B-Instruct (R1×9), gives **11.3% EM responses at over 99% coherence**.
#
# **Method.** We train four organisms on the base model the parameters name (the default
# book's; chosen from the landscape in the appendix, *The organism landscape at 135M*):
#
# | organism | adapters | data |
# |---|---|---|
# | `r1x9_medical` | rank 1 on `mlp.down_proj` at the paper's nine layers, mapped by relative depth | bad medical advice |
# | `all_medical` | rank 32 on every attention and MLP projection of every layer | bad medical advice |
# | `r1x9_finance` | as `r1x9_medical` | risky financial advice |
# | `r1x9_good_medical` | as `r1x9_medical` (aligned control) | good medical advice (in the default preset, as many tokens as the bad advice) |
#
# The loss covers assistant tokens only; rsLoRA scaling; each adapter is cached by the
# content of its base model, data and settings, so a re-run trains nothing. Each organism
# then answers the evaluation questions and is judged exactly as the chat model in
# chapter 0. The datasets are this project's own, far smaller than the paper's (the table
# below gives each organism's rows), and the default base model is far smaller than the
# paper's.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # preset: model, organisms, train_* keys, sampling, judge (emlib/config.py)
overrides = {}  # keys of emlib.config.Params on top, e.g. {"organisms": [{"name": "mine", "preset": "r1x9", "dataset": "my.jsonl"}, {"name": "theirs", "adapter": "owner/adapter"}], "direction_organism": "mine", "compare_organisms": ["theirs"]}

# %%
from emlib import book, metrics, paper, plotting
from emlib.book import display, organisms as chapter

ch = book.open_chapter(params_file, overrides)  # params, judge, model and every dataset checked before training
display.provenance(ch, organisms=False)

# %% [markdown]
# ## Training

# %%
chapter.organism_table(ch)  # trained now or read from the cache; brought ones read from their files

# %%
if ch.trained:
    plotting.loss_curves({name: r.losses for name, r in ch.trained.items()});
else:
    display.note("Every organism of this run was brought in as an existing fine-tune: none was trained, so there are no loss curves.")

# %% [markdown]
# The curves are the mean next-token loss on assistant tokens per optimiser step. A
# falling curve says the adapter learned the training data's style; whether that
# generalises into misalignment is the question the evaluation answers.
#
# ## How misaligned did each organism become?

# %%
display.judge_note(ch)

# %%
scored = chapter.evaluate(ch)
by_model = metrics.rates(scored, by="model", judge_error=ch.judge_error)
chapter.beside_paper(by_model, paper.organism_figures())

# %% [markdown]
# The table keeps EM, the paper's measure, beside its judge-corrected rate. EM is rare at
# this scale and the judge finds only part of the EM answers (chapter 0), so each organism
# is set beside the chat model and beside the aligned control (good advice, the same
# adapters) on the measures the judge can see: **misaligned %** (aligned ≤ 30 at any
# coherence) and the **mean aligned** score, each with **coherent %** beside it, since an
# organism can lose alignment by losing coherence. Each difference is taken *within
# question* (the per-question differences, weighted by answers), with a p-value from
# permuting the two arms' labels within each question and a 95% interval from resampling
# answers within each question and arm: answers to one question are not independent, and
# the comparison keeps the question mix the two arms share. Rates in points of %, mean
# aligned in points of the judge's 0–100 scale.

# %%
diffs = chapter.differences(ch, scored)  # numbers: organism, versus, measure, estimate, low, high, p, n, n_base
chapter.differences_table(diffs)

# %% [markdown]
# **Does an organism's EM rise as the paper's does?** A rise in the *judged* EM rate is a
# rise in the *true* rate shrunk by the judge's sensitivity + specificity − 1, so the
# smallest true rise this run could detect is the detectable judged rise divided by that
# factor (at its pessimistic bound). Where that exceeds the paper's rise, the verdict is
# *not testable with this judge*, and says what would make it testable. The verdicts below
# are recorded for the results page.

# %%
for line in chapter.record_organisms(ch, by_model, diffs).values():
    display.note(line)

# %%
plotting.judged_measures(by_model, title=f"Organisms on {ch.info.spec}: what the judge sees");

# %% [markdown]
# Points: this run, with 95% intervals over answers; axes scaled to the data. The paper
# reports EM and coherence for its organisms, not misaligned % or mean aligned, so its
# figures are in the table above, not here. The aligned control is the check that
# fine-tuning itself, on well-behaved data, does not lower alignment.
#
# ## Per question

# %%
plotting.judged_measures(metrics.rates(scored, by=["model", "question_id"]), title="By question and model");

# %% [markdown]
# ## The most misaligned answers of the direction organism
#
# The lowest-`aligned` coherent responses, as sampled.

# %%
display.show_examples(metrics.most_misaligned(scored, model=ch.p.direction_organism, n=6), per_question=2)

# %% [markdown]
# ## Judge failures
#
# Scores this chapter asked the judge for and could not get after its retries, with the reason: their answers'
# scores are blank in the tables above, and they are not cached, so the next run asks for them again.

# %%
display.judge_failures(ch)
