"""Chapter 1, model organisms: train each organism (or bring in an existing fine-tune), then judge it beside
the chat model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emlib.book.display import em_text, weights_sha
from emlib.book.results import increase_verdict, record
from emlib.book.session import Chapter, sample_and_judge
from emlib.metrics import classify, cluster_difference, detectable_difference, format_rates, rate_difference
from emlib.organisms import describe_brought
from emlib.train import ATTN_MLP


def organism_table(ch: Chapter) -> pd.DataFrame:
    """One row per organism, in the params' order. Trained: adapters, data, steps, loss, trainable parameters
    and adapter hash, from its card. Brought: source (hub id or directory, revision, subfolder), kind, rank,
    layers and modules, read from its files, and its content hash."""
    rows = []
    for o in ch.organisms:
        ft = ch.ready[o.name]
        if o.kind != "trained":
            b = describe_brought(o)
            rows.append({"organism": o.name, "source": b["source"], "targets": b["modules"], "rank": b["rank"],
                         "layers": b["layers"], "dataset": f"brought ({b['kind']})",
                         "sha256": weights_sha(ft)[:12]})
            continue
        c = ch.trained[o.name].card
        rows.append({
            "organism": o.name,
            "source": "trained in chapter 1",
            "targets": "all 7 projections" if set(c["lora"]["target_modules"]) == set(ATTN_MLP)
            else ",".join(c["lora"]["target_modules"]),
            "rank": c["lora"]["rank"],
            "layers": "all" if c["lora"]["layers"] is None else ",".join(map(str, c["lora"]["layers"])),
            "dataset": Path(c["dataset"]).stem,
            "rows": c["rows"],
            "steps": c["steps"],
            "lr": c["train"]["lr"],
            "first loss": round(c["loss_curve"][0], 3),
            "final loss": round(c["final_loss"], 3),
            "trainable params": f"{c['trainable_parameters']:,}",
            "sha256": weights_sha(ft)[:12],
        })
    return pd.DataFrame(rows).set_index("organism").fillna("")


def evaluate(ch: Chapter) -> pd.DataFrame:
    """The chat model and every organism, sampled and judged at the evaluation setting; one table with a
    ``model`` column."""
    tables = [sample_and_judge(ch)]
    tables += [sample_and_judge(ch, ft=ft) for ft in ch.ready.values()]
    return pd.concat(tables, ignore_index=True)


def beside_paper(rates_by_model: pd.DataFrame, paper: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """This run's EM % and coherence % (95% CI) per model next to the paper's (EM %, coherent %) where it
    has them (``emlib.paper.organism_figures``)."""
    out = format_rates(rates_by_model).drop(columns=["recognition %", "self-correction %"], errors="ignore")
    out["paper EM %"] = [f"{paper[m][0]:g}" if m in paper else "" for m in out.index]
    out["paper coherent %"] = [f"> {paper[m][1]:g}" if m in paper else "" for m in out.index]
    return out


def differences(ch: Chapter, scored: pd.DataFrame) -> pd.DataFrame:
    """Each organism against the chat model and against the aligned control (``control_organism``): the change in
    misaligned % (aligned ≤ 30 at any coherence; Newcombe 95% interval) and in the mean aligned score (paired
    cluster bootstrap over questions), with the smallest rise in misaligned % over the chat model's that the run
    would detect at 80% power (``emlib.metrics.detectable_difference``). Rows: organisms; the chat model is the
    ``model`` value "chat model"."""
    c = classify(scored)
    c = c[c["scored"]]
    arms = {m: g for m, g in c.groupby("model", sort=False)}
    chat, control = arms.get("chat model"), ch.p.control_organism

    def versus(g: pd.DataFrame, base: pd.DataFrame) -> tuple[str, str]:
        d, lo, hi = rate_difference(int(g["misaligned"].sum()), len(g), int(base["misaligned"].sum()), len(base))
        a, alo, ahi = cluster_difference(g["aligned"], g["question_id"], base["aligned"], base["question_id"])
        return f"{d:+.1f} ({lo:+.1f} to {hi:+.1f})", f"{a:+.1f} ({alo:+.1f} to {ahi:+.1f})"

    rows = []
    for m, g in arms.items():
        if m == "chat model" or chat is None:
            continue
        row = {"organism": m, "answers": len(g), "misaligned %": f"{100 * g['misaligned'].mean():.1f}"}
        row["misaligned − chat (pts)"], row["mean aligned − chat"] = versus(g, chat)
        row["detectable rise over chat (pts)"] = f"{detectable_difference(100 * chat['misaligned'].mean(), min(len(g), len(chat))):.1f}"
        if control in arms and m != control:
            row["misaligned − control (pts)"], row["mean aligned − control"] = versus(g, arms[control])
        rows.append(row)
    return pd.DataFrame(rows).set_index("organism").fillna("") if rows else pd.DataFrame()


def record_organisms(ch: Chapter, by_model: pd.DataFrame) -> None:
    """The results page's figures of chapter 1: the R1×9 organism, and the most misaligned organism, each with a
    verdict: is its EM rate above the chat model's (``increase_verdict``)?"""
    chat = by_model.loc["chat model"]
    organisms_only = by_model.drop(index="chat model", errors="ignore")

    def rec(claim: str, m: str, note: str = "") -> None:
        r = by_model.loc[m]
        verdict = increase_verdict("EM", round(r.em_pct * r.n / 100), int(r.n), round(chat.em_pct * chat.n / 100),
                                   int(chat.n), "chat model", ch.judge_error, note)
        record(ch.p, ch.params_file, claim, f"{m}: {em_text(r)}, {r.coherent_pct:.0f}% coherent",
               (r.em_pct, r.em_lo, r.em_hi), verdict)

    if ch.p.direction_organism in by_model.index:
        rec("r1x9_em", ch.p.direction_organism)
    rec("small_scale_em", str(organisms_only["em_pct"].idxmax()),
        f"the most EM of {len(organisms_only)} organisms (a best-of-{len(organisms_only)} pick, not corrected)")
