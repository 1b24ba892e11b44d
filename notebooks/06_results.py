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
# # Results at a glance
#
# Every claim this book checks, one line each: the verdict and why, the measure the
# verdict rests on, this run's effect with its 95% interval or p-value, the control it is
# measured against, the paper's figure and the chapter that measures it. The chapters
# record these as they execute; nothing here is typed by hand.
#
# **Verdicts.**
# - *Reproduced*: the paper's claim holds as stated, its size included (a cosine above the
#   paper's threshold and above its null; a random ablation inside the paper's band).
# - *Reproduced in direction*: the effect is there beyond its control (its interval
#   excludes 0 and its test's p is below the level) but the paper's size is not shown.
# - *Not reproduced*: the run could have seen the effect and did not; the reason says how
#   large an effect the run would have detected, counting the judge's error.
# - *Not testable*: the run could not have seen the paper's effect: *with this judge*
#   when the smallest true effect detectable through the judge's measured sensitivity and
#   specificity exceeds the paper's (the reason names the judge, and the sensitivity or the
#   number of answers that would make it testable), or too few random controls for the rank
#   test to reach its level, a set too small or dominated by one question, or an organism
#   without what the claim needs.
# - *Descriptive*: a figure reported without a test (the paper reports it qualitatively,
#   or the cell was not fixed before the run).
# - *Not measured*: no chapter recorded the claim with these parameters (the chapter was
#   not executed).
#
# **How each headline was chosen.** The steering headline is one cell fixed in the params
# before the run, tested against random vectors as units of a rank test; a best cell of
# a sweep is named as a best-of-sweep pick. The organism figure is the direction organism,
# named in the params; the "most misaligned" organism is a best-of-organisms pick, and says
# so.
#
# The embedded default (a model about a hundred times smaller than the paper's, trained on
# far fewer conversations, judged by an offline proxy instead of GPT-4o) is a demonstration
# that the pipeline runs end to end on a laptop, not a reproduction: expect its numbers to
# differ, often by a lot. Run the paper's preset (see *Reproduce at full scale*) for the
# reproduction.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the preset whose chapters' figures to collect
overrides = {}  # the same overrides the chapters ran with

# %%
from emlib import book, plotting
from emlib.book import display, results as chapter

ch = book.open_chapter(params_file, overrides)  # the same params (and checks) the chapters ran with
results = chapter.results_table(ch.p, ch.params_file)
display.note(chapter.preset_line(ch.p, ch.params_file, overrides))
chapter.show_results(results)

# %%
plotting.claims(results);

# %% [markdown]
# Bars: this run's figure for the claims that are one percentage (an EM rate, or an EM
# reduction), with its 95% interval; diamonds: the paper's. A claim with no percentage from
# this run names its verdict under its label instead. Claims marked *not run* need an
# organism or a direction this project does not build.
