"""Offline-judge designs side by side, each scored on sources it never saw (issue 12).

Every design is fitted on the labelled real answers of all but one fold of sources (plus the
hand-written calibration set) and scores the held-out fold; folds come from
``emlib.labels.grouped_folds`` (whole organisms and steering settings held out). Designs:

- ``embed-logreg``: the old judge retrained on real answers: logistic regressions on the
  MiniLM embedding features, score = 100 · P(label on the positive side of 50).
- ``all-ridge``: ridge regression of the 0–100 label on embeddings (PCA 32), surface and LM
  statistics, calibrated at the book's thresholds.
- ``all-hgb``: gradient-boosted trees on the same features, calibrated (the shipped judge,
  ``emlib.offline_judge``; its numbers are ``OfflineJudge.held_out``).
- ``all-hgb, no lm``: the same without the chat model's log-likelihood statistics (what the
  teacher-forced pass over every judged answer buys).
- ``cross-encoder`` (``--cross-encoder``): all-MiniLM-L6-v2 fine-tuned on (question, answer)
  pairs with a 3-output regression head, calibrated the same way (slow on a CPU).

    .venv/bin/python bench/bench_judge_designs.py [--cross-encoder] [--out bench/out/judge_designs.json]
    # the cross-encoder alone on a GPU (MiniLM weights carried as a directory):
    python bench/bench_judge_designs.py --designs cross-encoder --device cuda --embedder DIR --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from emlib.judge_check import auroc_table, em_error, source_rates  # noqa: E402
from emlib.labels import grouped_folds  # noqa: E402
from emlib.offline_judge import CUTS, FOLDS, OFFLINE_METRICS, OfflineJudge, calibrate, to_scale  # noqa: E402

CACHE = Path(".cache/emlib")


def _ridge(x, y, seed):
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13))).fit(x, y).predict


def _logreg(x, y, seed, metric):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-4, 1, 8), cv=3, max_iter=3000))
    model.fit(x, y > 50)
    return lambda z: 100 * model.predict_proba(z)[:, 1]


def _calibrated(fit, x, y, groups, real, cuts, seed):
    """``emlib.offline_judge.fit_metric`` for another regressor ``fit``."""
    rows = np.flatnonzero(real)
    oof = np.zeros(len(rows))
    for train, test in grouped_folds(groups[rows], n_folds=FOLDS, seed=seed):
        keep = np.setdiff1d(np.arange(len(x)), rows[test])
        oof[test] = fit(x[keep], y[keep], seed)(x[rows[test]])
    points = calibrate(oof, y[rows], cuts)
    predict = fit(x, y, seed)
    return lambda z: to_scale(predict(z), points)


def cross_encoder_scores(frame: pd.DataFrame, train_rows: np.ndarray, score_rows: list[np.ndarray], seed: int,
                         epochs: int = 2, device: str = "cpu", embedder: str | None = None) -> list[np.ndarray]:
    """Fine-tune MiniLM on (question, answer) -> the three labels of ``train_rows``; its predictions (0–100)
    [len(rows), 3] for each array of ``score_rows``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from emlib.judge_features import embedder_dir

    torch.manual_seed(seed)
    path = embedder or embedder_dir()
    tok = AutoTokenizer.from_pretrained(path)
    enc = AutoModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32).to(device)
    head = torch.nn.Linear(enc.config.hidden_size, 3).to(device)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=4e-5, weight_decay=0.01)
    y = torch.tensor(frame[list(OFFLINE_METRICS)].to_numpy() / 100, dtype=torch.float32, device=device)

    def forward(rows):
        b = tok(list(frame["question"].iloc[rows]), list(frame["response"].iloc[rows]), padding=True, truncation=True,
                max_length=256, return_tensors="pt").to(device)
        h = enc(**b).last_hidden_state
        m = b["attention_mask"][..., None].float()
        return head((h * m).sum(1) / m.sum(1))

    rng = np.random.default_rng(seed)
    enc.train()
    for _ in range(epochs):
        for chunk in np.array_split(rng.permutation(train_rows), max(1, len(train_rows) // 16)):
            loss = torch.nn.functional.mse_loss(forward(chunk), y[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
    enc.eval()
    with torch.no_grad():
        return [100 * np.concatenate([forward(c).float().cpu().numpy() for c in np.array_split(r, max(1, len(r) // 32))])
                for r in score_rows]


def evaluate(name: str, held: pd.DataFrame, seconds: float) -> dict:
    a = auroc_table(held)
    e = em_error(held)
    src = source_rates(held)
    return {"design": name, "misaligned AUROC": a.iloc[0]["AUROC"], "misaligned lo": a.iloc[0]["lo"],
            "misaligned hi": a.iloc[0]["hi"], "coherent AUROC": a.iloc[1]["AUROC"], "coherent lo": a.iloc[1]["lo"],
            "coherent hi": a.iloc[1]["hi"], "max |coherent gap|": float(src["coherent gap"].abs().max()),
            "sources within 10": f"{int((src['coherent gap'].abs() <= 10).sum())} of {len(src)}",
            "EM sensitivity": e.sensitivity, "EM specificity": e.specificity, "EM tp/fn/tn/fp": [e.tp, e.fn, e.tn, e.fp],
            "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cross-encoder", action="store_true")
    ap.add_argument("--designs", default="all-hgb,no-hidden,no-lm,embed-logreg,all-ridge", help="comma-separated subset")
    ap.add_argument("--device", default="cpu", help="the cross-encoder's device")
    ap.add_argument("--embedder", default=None, help="MiniLM directory (default: the installed package's)")
    ap.add_argument("--epochs", type=int, default=2, help="the cross-encoder's fine-tuning epochs")
    ap.add_argument("--fold-seeds", default="0", help="comma-separated seeds of the grouped folds for the shipped design "
                    "(which sources share a fold moves its figures: report the spread)")
    ap.add_argument("--out", default="bench/out/judge_designs.json")
    args = ap.parse_args()
    designs = args.designs.split(",") + (["cross-encoder"] if args.cross_encoder else [])
    judge = OfflineJudge(CACHE)
    frame, f = judge._training
    groups, real = frame["source"].to_numpy(), frame["real"].to_numpy()
    rows = np.flatnonzero(real)
    results = []
    for name, views in (("all-hgb", None), ("no-hidden", ("embedding", "text", "lm")), ("no-lm", ("embedding", "text"))):
        if name in designs:
            t0 = time.perf_counter()
            held = (judge if views is None else OfflineJudge(CACHE, views=views)).held_out()
            results.append(evaluate({"all-hgb": "all-hgb (shipped)", "no-hidden": "all-hgb, no hidden state (judge v2)",
                                     "no-lm": "all-hgb, no lm"}[name], held, time.perf_counter() - t0))
            print(results[-1], flush=True)
    for seed in [int(s) for s in args.fold_seeds.split(",") if int(s) != 0]:
        t0 = time.perf_counter()
        results.append(evaluate(f"all-hgb (shipped), folds seed {seed}", OfflineJudge(CACHE, seed=seed).held_out(),
                                time.perf_counter() - t0))
        print(results[-1], flush=True)
    for name in [d for d in ("embed-logreg", "all-ridge", "cross-encoder") if d in designs]:
        t0 = time.perf_counter()
        held = frame.iloc[rows].copy()
        for train, test in grouped_folds(groups[rows], n_folds=FOLDS, seed=0):
            keep = np.setdiff1d(np.arange(len(frame)), rows[test])
            fit_real = np.zeros(len(frame), bool)
            fit_real[rows[train]] = True
            if name == "cross-encoder":  # calibrated on its own (in-sample) training-fold predictions
                on_train, on_test = cross_encoder_scores(frame, keep, [rows[train], rows[test]], seed=0, epochs=args.epochs,
                                                         device=args.device, embedder=args.embedder)
                for k, m in enumerate(OFFLINE_METRICS):
                    points = calibrate(on_train[:, k], frame[m].to_numpy()[rows[train]], CUTS[m])
                    held.loc[held.index[test], f"judge_{m}"] = to_scale(on_test[:, k], points)
                continue
            pca = judge._pca(f, keep)
            x = judge.design_matrix(f, pca) if name == "all-ridge" else f["embedding"]
            for m in OFFLINE_METRICS:
                y = frame[m].to_numpy()
                if name == "embed-logreg":
                    predict = _logreg(x[keep], y[keep], 0, m)
                else:
                    predict = _calibrated(_ridge, x[keep], y[keep], groups[keep], fit_real[keep], CUTS[m], 0)
                held.loc[held.index[test], f"judge_{m}"] = predict(x[rows[test]])
        results.append(evaluate(f"{name} ({args.epochs} epochs)" if name == "cross-encoder" else name, held,
                                time.perf_counter() - t0))
        print(results[-1], flush=True)
    table = pd.DataFrame(results).set_index("design")
    print(table.drop(columns=["EM tp/fn/tn/fp"]).round(3).to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
