"""LoRA-scalar probes and the geometry of rank-1 adapters (chapter 4).

Each rank-1 adapter adds ``B·(A·x)`` to its module's output, so ``A·x`` — one number per
token per adapter — is all the adapter reads from the residual stream. ``lora_scalars``
reads those numbers (A times each adapted module's input) in a teacher-forced pass with nnsight;
``response_features`` averages them over each response's answer tokens, and ``token_scalars``
keeps them token by token for one response. Logistic
regressions on the features (standardised, regularisation chosen by cross-validation)
say which adapters carry misalignment and which carry the medical context; their
out-of-fold predictions give accuracy and AUROC with confidence intervals, and
``auroc_difference`` sets the trained readouts against random ones (paired bootstrap over
answers). Coefficient roles are read after Holm's correction over every coefficient test
(``adapter_roles``). The adapters' geometry (B vectors, induced changes) is ``emlib.adapter_geometry``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from safetensors.numpy import load_file, save_file
from scipy.stats import rankdata
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from emlib.activations import Batch, batches, encode
from emlib.cache import atomic_path, content_key
from emlib.generate import input_device
from emlib.inference import Effect, holm
from emlib.interventions import envoy_at, wrap
from emlib.metrics import wilson_interval
from emlib.models import decoder_layers


@dataclass(frozen=True)
class Adapter:
    """One rank-1 LoRA adapter: where it sits and its two vectors (A [d_in], B [d_out], scaling folded into B)."""

    name: str  # e.g. "L9.down_proj"
    layer: int
    module: str  # path of the adapted module in the model
    a: torch.Tensor
    b: torch.Tensor


FEATURES_VERSION = 1  # bump when a change alters response_features' numbers


def rank1_adapters(model: nn.Module) -> list[Adapter]:
    """Every rank-1 LoRA adapter of a PEFT ``model``, in layer order. Raises if there is none or one isn't rank 1."""
    blocks = {id(b): i for i, b in enumerate(decoder_layers(model))}
    layer_of: dict[str, int] = {}
    for name, module in model.named_modules():
        if id(module) in blocks:
            layer_of[name] = blocks[id(module)]
    out = []
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, nn.ModuleDict) or not lora_a:
            continue
        key = next(iter(lora_a))
        a, b = lora_a[key].weight.detach(), lora_b[key].weight.detach()
        if a.shape[0] != 1:
            raise ValueError(f"{name}: rank {a.shape[0]} adapter; LoRA-scalar probes need rank-1 adapters (r1x9)")
        layer = next(layer_of[p] for p in sorted(layer_of, key=len, reverse=True) if name.startswith(p + "."))
        scale = float(module.scaling[key])
        out.append(Adapter(f"L{layer}.{name.rsplit('.', 1)[-1]}", layer, name, a[0].float(), b[:, 0].float() * scale))
    if not out:
        raise ValueError("the model has no LoRA adapters: load it with the organism's adapter")
    return sorted(out, key=lambda ad: ad.layer)


@torch.inference_mode()
def lora_scalars(model: nn.Module, batch: Batch, adapters: list[Adapter]) -> torch.Tensor:
    """A·x of every adapter at every position: [batch, seq, n_adapters]. x is read at each adapted module's
    input with nnsight, once per module, and multiplied there by every readout of that module, so ``adapters``
    may hold other readouts of the same modules (e.g. ``random_readouts``), all from the same pass, and only
    the scalars leave the device."""
    device = input_device(model)
    ids, attention = batch.ids.to(device), batch.attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    envoy, _ = wrap(model)
    modules = list(dict.fromkeys(ad.module for ad in adapters))
    readouts = [torch.stack([ad.a.float() for ad in adapters if ad.module == m]) for m in modules]  # [k_m, d_in] each
    per_module: list[torch.Tensor] = []

    def forward(tokens: torch.Tensor) -> None:
        model(input_ids=tokens, attention_mask=attention, position_ids=positions, logits_to_keep=1, use_cache=False)

    with envoy.trace(ids, fn=forward):
        for module, a in zip(modules, readouts):
            x = envoy_at(envoy, module).input
            per_module.append((x.float() @ a.to(x.device).T).cpu())  # [batch, seq, k_m]
    columns = {m: iter(values.unbind(-1)) for m, values in zip(modules, per_module)}
    return torch.stack([next(columns[ad.module]) for ad in adapters], dim=-1)


def response_features(model: nn.Module, tokenizer: PreTrainedTokenizerBase, samples: pd.DataFrame,
                      adapters: list[Adapter], batch_size: int = 16, progress: bool = True, *,
                      cache_dir: str | Path | None = None, model_provenance: dict[str, Any] | None = None) -> np.ndarray:
    """Mean A·x over each response's answer tokens: [n_responses, n_adapters], rows in ``samples`` order. With
    ``cache_dir``, cached by the model's provenance, every readout's A and the texts (``features_path``), written
    atomically; a later call reads it without a pass."""
    system = samples["system"] if "system" in samples else [None] * len(samples)
    texts = [(q, s if isinstance(s, str) else None, r) for q, r, s in zip(samples["question"], samples["response"], system)]
    path = None
    if cache_dir is not None:
        path = features_path(texts, adapters, cache_dir=cache_dir, model_provenance=model_provenance)
        if path.is_file():
            return load_file(str(path))["features"]
    encoded = [encode(tokenizer, q, r, s) for q, s, r in texts]
    out = np.zeros((len(encoded), len(adapters)))
    starts = range(0, len(encoded), batch_size)
    for start, batch in tqdm(zip(starts, batches(encoded, batch_size, tokenizer.pad_token_id)), total=len(starts),
                             desc="LoRA scalars", unit="batch", disable=not progress):
        scalars = lora_scalars(model, batch, adapters)  # [b, t, n]
        mask = batch.answer[..., None].float()
        out[start : start + len(scalars)] = ((scalars * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": out}, str(tmp))
    return out


def features_path(texts: list[tuple[str, str | None, str]], adapters: list[Adapter], *, cache_dir: str | Path,
                  model_provenance: dict[str, Any] | None) -> Path:
    """Where ``response_features`` caches the features of ``texts`` (question, system, response) read by
    ``adapters``: keyed by the model (``model_provenance``, required), each readout's name, module and A bytes,
    and the texts."""
    if model_provenance is None:
        raise ValueError("response_features: a cache_dir needs the model's provenance (model_provenance=...)")
    readouts = [(a.name, a.module, hashlib.sha256(a.a.float().contiguous().numpy().tobytes()).hexdigest())
                for a in adapters]
    key = content_key({"model": model_provenance, "readouts": readouts, "texts": texts, "version": FEATURES_VERSION})
    return Path(cache_dir) / "activations" / f"lora-scalars-{key}.safetensors"


def random_readouts(adapters: list[Adapter], seed: int = 0) -> list[Adapter]:
    """Each adapter of ``adapters`` reading along a random direction of the same norm as its trained A (B kept):
    the control that chapter 4's probes are set beside. Pass them to ``lora_scalars`` with the trained ones:
    they read the same activations (the model itself is not changed), so the control differs in the readout
    alone."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for ad in adapters:
        r = torch.randn(ad.a.shape, generator=g)
        out.append(Adapter(ad.name, ad.layer, ad.module, r / r.norm() * ad.a.norm(), ad.b))
    return out


def token_scalars(model: nn.Module, tokenizer: PreTrainedTokenizerBase, question: str, response: str,
                  adapters: list[Adapter], system: str | None = None) -> pd.DataFrame:
    """Per-token A·x of every adapter over one response's answer tokens: [n_answer_tokens, n_adapters]
    (index: the tokens as text, in order; columns: adapter names). Chapter 4's per-token view."""
    ids, n_prompt = encode(tokenizer, question, response, system)
    batch = next(batches([(ids, n_prompt)], 1, tokenizer.pad_token_id))
    scalars = lora_scalars(model, batch, adapters)[0, batch.answer[0]]  # [n_answer, n_adapters]
    tokens = [tokenizer.decode([t]) for t in ids[n_prompt:]]
    return pd.DataFrame(scalars.numpy(), index=pd.Index(tokens, name="token"), columns=[ad.name for ad in adapters])


@dataclass(frozen=True)
class ProbeResult:
    """A cross-validated probe: accuracy and AUROC with 95% CIs, standardised coefficients per feature, and the
    out-of-fold scores [n] with their labels [n] (for ``auroc_difference``)."""

    accuracy: float
    accuracy_ci: tuple[float, float]
    auroc: float
    auroc_ci: tuple[float, float]
    coefficients: pd.DataFrame  # index: feature; columns: coef, lo, hi (bootstrap 95% CI), p (bootstrap, two-sided)
    n: int
    n_positive: int
    folds: int
    labels: np.ndarray  # [n] bool
    scores: np.ndarray  # [n] out-of-fold P(positive)


def bootstrap_p(draws: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "the statistic is 0" per column of ``draws`` [n_boot, k]: twice the smaller
    share of draws on either side of 0, each share counted as (1 + draws) / (1 + n_boot) so that p > 0 and
    its smallest value is 2 / (1 + n_boot). [k]"""
    d = np.asarray(draws, dtype=float)
    b = len(d)
    below, above = (d <= 0).sum(0), (d >= 0).sum(0)
    return np.minimum(1.0, 2 * (1 + np.minimum(below, above)) / (1 + b))


def coefficient_permutation_p(features: np.ndarray, labels: np.ndarray, c: float, coef: np.ndarray, *, n_perm: int,
                               rng: np.random.Generator) -> np.ndarray:
    """Two-sided p of "coefficient j is 0" per feature: the share of ``n_perm`` label permutations whose refit (the
    same standardised logistic regression at regularisation ``c``) gives |coef_j| at least |``coef``_j|, counted as
    (1 + count) / (1 + n_perm). Exact under "the label is independent of the features"; its smallest value is
    1 / (1 + n_perm), so Holm over 18 tests at 0.05 needs n_perm ≥ 360. (A bootstrap-sd Wald p was tried and
    rejected: at 16–40 answers it gave p < 0.05 for 15% of null coefficients.) [k]"""
    x = StandardScaler().fit_transform(features)
    y = np.asarray(labels, dtype=int)
    model = LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=2000)
    hits = np.zeros(x.shape[1])
    for _ in range(n_perm):
        hits += np.abs(model.fit(x, rng.permutation(y)).coef_[0]) >= np.abs(coef) - 1e-12
    return (1 + hits) / (1 + n_perm)


def fit_probe(features: np.ndarray, labels: np.ndarray, names: list[str], seed: int = 0, n_boot: int = 200,
              n_perm: int = 1000) -> ProbeResult:
    """Logistic regression (standardised features, C by cross-validation, balanced classes) on
    ``features`` [n, k] predicting boolean ``labels`` [n].

    Accuracy and AUROC are out-of-fold (stratified k-fold, k = min(5, minority class size));
    accuracy has a Wilson CI, AUROC a bootstrap CI. Coefficients are those of the model fit on
    all rows, with bootstrap 95% CIs (``n_boot`` refits at the chosen C) and two-sided label-permutation p-values
    (``coefficient_permutation_p``, ``n_perm`` refits; 0: no p, nan — chapter 4's random-readout controls).
    """
    y = np.asarray(labels, dtype=int)
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < 2:
        raise ValueError(f"a probe needs at least 2 examples of each class; got {int(y.sum())} positive of {len(y)}")
    folds = min(5, minority)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    cv_model = make_pipeline(StandardScaler(), LogisticRegressionCV(
        Cs=np.logspace(-3, 2, 8), cv=cv, class_weight="balanced", scoring="neg_log_loss", solver="liblinear", max_iter=2000))
    with warnings.catch_warnings():  # scikit-learn 1.9 announces 1.10 API changes
        warnings.simplefilter("ignore", FutureWarning)
        proba = cross_val_predict(cv_model, features, y, cv=cv, method="predict_proba")[:, 1]
        cv_model.fit(features, y)
    correct = int(((proba > 0.5) == y).sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    aucs = auroc_rows(y[idx].astype(bool), proba[idx])
    auroc_ci = tuple(float(v) for v in np.nanpercentile(aucs, [2.5, 97.5]))
    c = float(np.ravel(cv_model[-1].C_)[0])
    coef = cv_model[-1].coef_[0]
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            m = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=2000))
            boots.append(m.fit(features[idx], y[idx])[-1].coef_[0])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    p = (coefficient_permutation_p(features, y, c, coef, n_perm=n_perm, rng=rng) if n_perm
         else np.full(len(coef), np.nan))
    table = pd.DataFrame({"coef": coef, "lo": lo, "hi": hi, "p": p},
                         index=pd.Index(names, name="adapter"))
    return ProbeResult(correct / len(y), wilson_interval(correct, len(y)), float(roc_auc_score(y, proba)),
                       auroc_ci, table, len(y), int(y.sum()), folds, y.astype(bool), proba)


def auroc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each row: boolean ``labels`` [b, n], ``scores`` [b, n] (Mann–Whitney from mid-ranks, ties counted
    half); nan for a row with one class only. [b]"""
    y = np.asarray(labels, dtype=bool)
    ranks = rankdata(np.asarray(scores, dtype=float), axis=1)
    n1 = y.sum(1).astype(float)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), ((ranks * y).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0), np.nan)


def auroc_difference(labels: np.ndarray, scores: np.ndarray, control_scores: np.ndarray, *, n_boot: int = 2000,
                     seed: int = 0, measure: str = "trained − random-readout AUROC") -> Effect:
    """AUROC(``scores``) − AUROC(``control_scores``) on the same answers (boolean ``labels`` [n]; out-of-fold scores
    [n] of the trained probe and of the same probe on random readouts), with a 95% percentile interval and a
    two-sided p (``bootstrap_p``) from a paired bootstrap over answers: each resample draws answers with
    replacement and recomputes both AUROCs on them (resamples with one class only are skipped). Chapter 4."""
    y = np.asarray(labels, dtype=bool)
    a, b = np.asarray(scores, dtype=float), np.asarray(control_scores, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    d = auroc_rows(y[idx], a[idx]) - auroc_rows(y[idx], b[idx])
    d = d[~np.isnan(d)]
    lo, hi = np.percentile(d, [2.5, 97.5])
    return Effect(measure, float(roc_auc_score(y, a) - roc_auc_score(y, b)), float(lo), float(hi),
                  float(bootstrap_p(d[:, None])[0]), len(y), len(y),
                  "paired bootstrap over answers of the out-of-fold AUROCs; percentile 95% interval")


def role_tests(misalignment: ProbeResult, medical: ProbeResult, alpha: float = 0.05) -> pd.DataFrame:
    """Every coefficient test of the two probes as one family: per adapter, each probe's bootstrap p and its
    Holm-adjusted p over all 2·k tests (``emlib.inference.holm``), and the role read from the adjusted ones at
    ``alpha``: "general" (misalignment coefficient ≠ 0), "medical-specific" (only the medical one ≠ 0),
    "general + medical", or "neither". Index: adapter. Chapter 4."""
    p = np.r_[misalignment.coefficients["p"].to_numpy(float), medical.coefficients["p"].to_numpy(float)]
    adjusted = holm(p)
    k = len(misalignment.coefficients)
    mis, med = adjusted[:k] < alpha, adjusted[k:] < alpha
    roles = np.select([mis & med, mis, med], ["general + medical", "general", "medical-specific"], "neither")
    return pd.DataFrame({"misalignment p": p[:k], "misalignment p (Holm)": adjusted[:k], "medical p": p[k:],
                         "medical p (Holm)": adjusted[k:], "role": roles}, index=misalignment.coefficients.index)


def adapter_roles(misalignment: ProbeResult, medical: ProbeResult, alpha: float = 0.05) -> pd.Series:
    """Each adapter's role from the two probes' coefficients, Holm-corrected over all of them (``role_tests``)."""
    return role_tests(misalignment, medical, alpha)["role"]


MIN_PROBE_CLASS = 5  # a probe is fitted only with at least this many answers in each class (chapter 4)


def probe_datasets(general: pd.DataFrame, medical: pd.DataFrame, coherent_min: float = 50.0, aligned_min: float = 70.0,
                   misaligned_max: float = 30.0) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """The two probes' rows and boolean labels [n]: misaligned (True) vs aligned among the judged ``general``
    answers (the direction sets of ``emlib.directions.response_sets``), and medical (True) vs general context
    (every answer of ``medical`` and ``general``). Chapter 4."""
    from emlib.directions import response_sets

    aligned, misaligned = response_sets(general, coherent_min, aligned_min, misaligned_max)
    mis = pd.concat([misaligned, aligned], ignore_index=True)
    med = pd.concat([medical, general], ignore_index=True)
    return {"misaligned vs aligned": (mis, np.r_[np.ones(len(misaligned)), np.zeros(len(aligned))].astype(bool)),
            "medical vs general context": (med, np.r_[np.ones(len(medical)), np.zeros(len(general))].astype(bool))}


def fittable(labels: np.ndarray) -> bool:
    """Whether each class of boolean ``labels`` has at least ``MIN_PROBE_CLASS`` answers."""
    return int(min(labels.sum(), len(labels) - labels.sum())) >= MIN_PROBE_CLASS


def roles_table(misalignment: ProbeResult | None, medical: ProbeResult | None, alpha: float = 0.05) -> pd.DataFrame:
    """Each adapter's two coefficients, their Holm-adjusted p-values over all coefficient tests and its role
    (``role_tests``); NaN and "n/a" where a probe was not fitted (None). ``attrs["summary"]`` counts the roles,
    ``attrs["counts"]`` is role -> count. Chapter 4."""
    fitted = [r for r in (misalignment, medical) if r is not None]
    if not fitted:
        out = pd.DataFrame(columns=["role"]).rename_axis("adapter")
        out.attrs.update(summary="no probe fitted", counts={})
        return out
    index = fitted[0].coefficients.index
    out = pd.DataFrame({"misalignment coef": misalignment.coefficients["coef"].round(3) if misalignment else np.nan,
                        "medical coef": medical.coefficients["coef"].round(3) if medical else np.nan}, index=index)
    if misalignment and medical:
        tests = role_tests(misalignment, medical, alpha)
        out["misalignment p (Holm)"] = tests["misalignment p (Holm)"].round(3)
        out["medical p (Holm)"] = tests["medical p (Holm)"].round(3)
        out["role"] = tests["role"]
    else:
        out["role"] = "n/a (a probe was not fitted)"
    counts = out["role"].value_counts()
    out.attrs.update(summary=", ".join(f"{n} {role}" for role, n in counts.items()),
                     counts={str(r): int(n) for r, n in counts.items()})
    return out
