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
# 2. Probe (a): misaligned vs aligned answers to the general questions, with chapter 2's sets
#    and chapter 2's labels (the note below names the judge). Probe (b): answers to this
#    project's medical questions vs the general ones. Standardised features, regularisation by
#    cross-validation, balanced classes; accuracy and AUROC are out-of-fold. A probe is fitted
#    only with enough answers in each class (`emlib.probes.MIN_PROBE_CLASS`); the table says
#    when it is not.
# 3. Each probe has a control: the same probe on random readouts (each A replaced by a random
#    vector of its norm, read from the same activations). The verdict per probe is the
#    trained minus random-readout AUROC with a 95% interval from a paired bootstrap over
#    answers. Coefficient roles come from bootstrap p-values, Holm-corrected over every
#    coefficient test of both probes.
# 4. Geometry, each against a null of the same dimension: cos(B, direction at B's layer)
#    against the exact cosine distribution of a uniformly random direction in the model's
#    width, in units of $1/\sqrt{d}$ (the null's standard deviation), beside the paper's in the
#    same units; and, on the same texts, the change of the answer-token means from the chat
#    model's when the adapters are on vs when the chat model is steered with the direction,
#    layer by layer, against the same comparison with random steering vectors of the
#    direction's norm.

# %% tags=["parameters"]
params_file = "params/default.yaml"  # preset; the LoRA-scalar sections need direction_organism to be rank-1 adapters (emlib/config.py)
overrides = {}  # keys of emlib.config.Params on top

# %%
from emlib import book, paper, plotting
from emlib.book import display, lora_probes as chapter
from emlib.book.direction_extraction import labels_note, source_of, topic_direction

ch = book.open_chapter(params_file, overrides)  # params, judge and model checked: bad input fails here, in seconds
p = ch.p
probed = chapter.probed_organism(ch)  # the direction organism, unmerged with its rank-1 adapters (or why it has none)
display.provenance(ch, probed.info)

# %%
source, general = source_of(ch)  # the direction and the judged answers, from chapter 2's cache (chapter 2's labels)
display.note(labels_note(ch))
adapters_table = roles = fitted = control = effects = None
if probed.skipped:
    display.note(probed.skipped)
else:
    adapters_table = chapter.adapter_table(probed.adapters, source)
    display.show(adapters_table)
    plotting.adapter_cosines(chapter.b_cosines(adapters_table), paper=chapter.paper_b_units());
    display.note(f"**Verdict:** {chapter.b_verdict(adapters_table).text()}.")

# %% [markdown]
# Each B vector against the mean-diff direction at its own layer, in units of $1/\sqrt{d}$, beside
# the paper's figure in the same units. The grey band is where a uniformly random direction's
# cosine falls, at a family-wise level over the adapters (Bonferroni): the same band the
# verdict reads. A bar inside it is as orthogonal to the direction as chance makes two
# unrelated directions at this width.
#
# ## Probes on the LoRA scalars

# %%
if not probed.skipped:
    _, medical = topic_direction(ch)  # the organism's answers to the medical questions, from chapter 2's cache
    datasets = chapter.probe_datasets(ch, general, medical)
    fitted, control = chapter.fit_probes(ch, probed, datasets)  # and the same probes on untrained (random) readouts
    display.show(chapter.probe_table(fitted, datasets, control))
    effects = chapter.probe_effects(fitted, control, p.seed)
    display.show(chapter.probe_verdicts(fitted, control, effects))
    for name, e in effects.items():
        display.note(chapter.probe_reading(name, e))

# %% [markdown]
# The first table gives each probe and its control: the same probe on the same activations
# read along a random vector of the same norm as each A instead of A, what an untrained
# readout of those activations gives. The second sets them against each other on the same
# answers: a difference whose interval lies above 0 says the trained readouts carry more
# than random ones; one whose interval includes 0 is no evidence that they do.
#
# Which adapters carry what: blue bars are coefficients whose Holm-adjusted p is below the
# test level over all coefficient tests of both probes. An adapter is *general* if it
# predicts misalignment, *medical-specific* if it predicts only the medical context. The
# paper: six general and two medical-specific of nine. The roles are compared with the
# paper's only when both probes beat their random readouts.

# %%
if not probed.skipped:
    roles = chapter.roles(fitted)
    plotting.probe_coefficients(fitted, title=f"Which adapters carry what ({p.direction_organism})",
                                significant=chapter.significant(roles));
    display.show(roles)
    display.note(f"Correction: {chapter.ROLES_CORRECTION}. **Verdict:** {chapter.roles_verdict(roles, effects).text()}.")

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
downstream = chapter.downstream_geometry(ch, probed.ft, general, source)
chapter.record_probes(ch, adapters_table, roles, effects, downstream)  # for the results page
lo, hi = downstream.band
name = "cos(Δ adapters, Δ steering with the direction)"
plotting.by_layer({name: downstream.cosines.tolist()}, ylabel="cosine", hline=paper.value("downstream_cosine"),
                  hline_label=f"paper: {paper.FIGURES['downstream_cosine'].text}",
                  bands={name: (lo.tolist(), hi.tolist())},
                  band_label=f"range of {len(downstream.null)} random steering vectors (null)",
                  marks={"steered layer": downstream.steer_layer, "paper's depth": downstream.paper_at},
                  title="Activation changes induced by the adapters vs by steering", legend_outside=True);
display.note(chapter.downstream_note(downstream))

# %% [markdown]
# Before the steered layer the steering changes nothing, so the cosine there is empty of
# meaning. From it on, the line is the direction's cosine and the shaded band the range of
# random steering vectors of the same norm at the same layer: a random push also moves the
# later activations, so only a cosine above the band says the adapters move them the way
# steering along the direction does, more than along any direction would.

# %% [markdown]
# ## Judge failures
#
# Scores this chapter asked the judge for and could not get after its retries, with the reason: their answers'
# scores are blank in the tables above, and they are not cached, so the next run asks for them again.

# %%
display.judge_failures(ch)
