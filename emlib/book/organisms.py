"""Chapter 1, model organisms: train each organism, then judge it beside the chat model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from emlib.book.display import adapter_hash, em_text
from emlib.book.results import record
from emlib.book.session import Chapter, sample_and_judge
from emlib.metrics import format_rates
from emlib.train import ATTN_MLP, TrainResult


def organism_table(trained: dict[str, TrainResult]) -> pd.DataFrame:
    """One row per trained organism: adapters, data, steps, loss, trainable parameters, adapter hash."""
    rows = []
    for name, r in trained.items():
        c = r.card
        rows.append({
            "organism": name,
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
            "adapter sha256": adapter_hash(r.adapter_dir),
        })
    return pd.DataFrame(rows).set_index("organism")


def evaluate(ch: Chapter) -> pd.DataFrame:
    """The chat model and every organism, sampled and judged at the evaluation setting; one table with a
    ``model`` column."""
    tables = [sample_and_judge(ch, label="chat model")]
    tables += [sample_and_judge(ch, adapter=r.adapter_dir, label=name) for name, r in ch.trained.items()]
    return pd.concat(tables, ignore_index=True)


def beside_paper(rates_by_model: pd.DataFrame, paper: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """This run's EM % and coherence % (95% CI) per model next to the paper's (EM %, coherent %) where it
    has them (``emlib.paper.organism_figures``)."""
    out = format_rates(rates_by_model).drop(columns=["recognition %", "self-correction %"], errors="ignore")
    out["paper EM %"] = [f"{paper[m][0]:g}" if m in paper else "" for m in out.index]
    out["paper coherent %"] = [f"> {paper[m][1]:g}" if m in paper else "" for m in out.index]
    return out


def record_organisms(ch: Chapter, by_model: pd.DataFrame) -> None:
    """The results page's figures of chapter 1: the R1×9 organism, and the most misaligned organism."""
    def rec(claim: str, m: str) -> None:
        r = by_model.loc[m]
        record(ch.p, ch.params_file, claim,
               f"{m}: {em_text(r)}, {r.coherent_pct:.0f}% coherent",
               (r.em_pct, r.em_lo, r.em_hi))

    if ch.p.direction_organism in by_model.index:
        rec("r1x9_em", ch.p.direction_organism)
    organisms_only = by_model.drop(index="chat model", errors="ignore")
    rec("small_scale_em", str(organisms_only["em_pct"].idxmax()))
