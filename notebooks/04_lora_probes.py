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
# # 4. What the rank-1 adapters read, and where they write
#
# **Claim.** In the R1×9 organism each adapter adds B·(A·x) to an MLP output, so the
# scalar A·x — one number per token per adapter — is everything the adapter reads. The
# paper fits logistic regressions on the nine scalars and finds **six adapters that
# track misalignment in general and two that track the medical context**. It also finds
# that the adapters do not write along the mean-diff direction: a B vector has cosine
# **0.04** with the direction at its layer, yet the activation changes the adapters
# induce further down come to resemble those of steering with the direction (cosine
# **0.42 by layer 40 of 48**).
#
# **Method.**
# 1. Read A·x at every answer token with a teacher-forced pass through the organism
#    (`emlib.probes.lora_scalars`, the `lora_A` outputs via nnsight); average per answer.
# 2. Probe (a): misaligned vs aligned answers to the eight general questions (chapter 2's
#    sets). Probe (b): answers to this project's eight medical questions vs the general
#    ones. Standardised features, regularisation by cross-validation, balanced classes;
#    accuracy and AUROC are out-of-fold, coefficients have bootstrap CIs. A probe is
#    fitted only with at least five answers in each class; at small scale probe (a)
#    often has fewer misaligned answers than that, and the table says so.
# 3. Geometry: cos(B, direction at B's layer); and, on the same texts (chapter 2's
#    extraction answers, or a seeded sample of `geometry_answers` of them), the change of the
#    answer-token means from the chat model's when the adapters are on vs when the chat
#    model is steered with the direction, compared layer by layer.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # preset; the LoRA-scalar sections need direction_organism to be rank-1 adapters (emlib/config.py)
overrides = {}  # keys of emlib.config.Params on top

# %%
from emlib import book, paper, plotting
from emlib.book import display, lora_probes as chapter
from emlib.book.direction_extraction import source_of, topic_direction
from emlib.models import paper_layer

ch = book.open_chapter(params_file, overrides)  # params, judge and model checked: bad input fails here, in seconds
p = ch.p
probed = chapter.probed_organism(ch)  # the direction organism, unmerged with its rank-1 adapters (or why it has none)
display.provenance(ch, probed.info)

# %%
source, general = source_of(ch)  # the direction and the judged answers, from chapter 2's cache
adapters_table = roles = fitted = control = None
if probed.skipped:
    display.note(probed.skipped)
else:
    adapters_table = chapter.adapter_table(probed.adapters, source)
    display.show(adapters_table)
    plotting.adapter_cosines(chapter.b_cosines(adapters_table), paper=paper.value("b_cosine"));

# %% [markdown]
# Each B vector against the mean-diff direction at its own layer, beside the paper's
# figure. A cosine near 0 is what two unrelated directions give: the grey band is one
# standard deviation of the cosine of two random directions, 1/√d_model.
#
# ## Probes on the LoRA scalars

# %%
if not probed.skipped:
    _, medical = topic_direction(ch)  # the organism's answers to the medical questions, from chapter 2's cache
    datasets = chapter.probe_datasets(ch, general, medical)
    fitted, control = chapter.fit_probes(ch, probed, datasets)  # and the same probes on untrained (random) readouts
    display.show(chapter.probe_table(fitted, datasets, control))
    plotting.probe_coefficients(fitted, title=f"Which adapters carry what ({p.direction_organism})");

# %% [markdown]
# Each probe is followed by its control: the same probe on the same activations (the
# organism's, in the same teacher-forced pass) read along a random vector of the same norm
# as each A instead of A — what an untrained readout of those activations would give. A
# probe that does no better than its control says the trained readouts carry nothing a
# random one does not.
#
# Blue bars: coefficients whose bootstrap 95% interval excludes zero. An adapter is
# *general* if it predicts misalignment, *medical-specific* if it predicts only the
# medical context. The paper: six general and two medical-specific of nine.

# %%
if not probed.skipped:
    roles = chapter.roles(fitted)
    display.show(roles)

# %% [markdown]
# The probes average A·x over each answer. The same scalars token by token, over the
# organism's least aligned coherent answer, show where in the text each adapter reads
# something (each row scaled to its own largest value).

# %%
if not probed.skipped:
    tokens = chapter.example_token_scalars(probed.model, probed.tok, general, probed.adapters)
    plotting.token_scalars(tokens, title=f"A·x per answer token (answer judged aligned = {tokens.attrs['aligned']:.0f})");

# %% [markdown]
# ## Where the adapters write: induced changes downstream

# %%
cosines, steer_layer = chapter.downstream_geometry(ch, probed.ft, general, source)
chapter.record_probes(ch, adapters_table, roles, fitted, cosines, control)  # for the results page
paper_at = int(paper.value("downstream_layer"))
plotting.by_layer({"cos(Δ adapters, Δ steering)": cosines}, ylabel="cosine", hline=paper.value("downstream_cosine"),
                  hline_label=f"paper: {paper.FIGURES['downstream_cosine'].text}",
                  marks={"steered layer": steer_layer, f"paper's layer {paper_at} (rel. depth)": paper_layer(paper_at, len(cosines))},
                  title="Activation changes induced by the adapters vs by steering");

# %% [markdown]
# Before the steered layer the steering changes nothing, so the cosine there is noise.
# From it on, a rising cosine says the adapters — writing along directions almost
# orthogonal to the mean-diff vector — still move later activations the way steering
# along it does.
