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
# Every claim this book checks, the paper's figure beside this run's (95% intervals as the
# chapters compute them), a verdict, the chapter that measures it and the preset it came
# from. The figures are recorded by the chapters as they execute; nothing here is typed by
# hand.
#
# **Verdicts.** *Reproduced (in direction)*: the effect the paper reports is present, its
# interval excluding no effect (an EM rate above the chat model's, an EM reduction above 0,
# directions sharing more than label-free splits of the same answers do); its size may
# still differ from the paper's. *Not reproduced*: the interval includes no effect, and the
# verdict says how large an effect the run would have detected. *Not testable*: the run had
# nothing to measure it on (no EM answers to remove, no rank-1 adapters, a set empty).
# **How each headline was chosen.** The steering headline is one (layer, λ) cell fixed in
# the params before the run (`headline_layer`, `headline_scale`), compared with the
# unsteered model and with `random_controls` same-norm random vectors at that cell; the
# sweep's best cell is quoted beside it and named as a best-of-sweep pick, not corrected
# for the search. The organism figure is the direction organism, named in the params; the
# "most EM" organism is a best-of-organisms pick, and says so. Cosines count the layers
# above the paper's threshold and above the random-subset null, over every layer.
#
# The embedded default (SmolLM2-135M-Instruct, about 100× smaller than the paper's
# Qwen2.5-14B-Instruct, trained on about 350 conversations instead of about 6,000, judged
# by an offline proxy instead of GPT-4o) is a demonstration that the pipeline runs end to
# end on a laptop, not a reproduction: expect its numbers to differ, often by a lot. Run
# the paper's preset (see *Reproduce at full scale*) for the reproduction.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # the preset whose chapters' figures to collect
overrides = {}  # the same overrides the chapters ran with

# %%
from emlib import book, plotting
from emlib.book import results as chapter

ch = book.open_chapter(params_file, overrides)  # the same params (and checks) the chapters ran with
results = chapter.results_table(ch.p, ch.params_file)
chapter.show_results(results)

# %%
plotting.claims(results);

# %% [markdown]
# *Not measured in this run* means the chapter did not record the figure (for instance it
# was not executed with these parameters). Claims marked *not run* need an organism or a
# direction this project does not build.
