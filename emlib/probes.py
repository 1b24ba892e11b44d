"""LoRA-scalar probes and the geometry of rank-1 adapters (chapter 4).

Each rank-1 adapter adds ``B·(A·x)`` to its module's output, so ``A·x`` — one number per
token per adapter — is all the adapter reads from the residual stream. ``lora_scalars``
reads those numbers (A times each adapted module's input) in a teacher-forced pass with nnsight;
``response_features`` averages them over each response's answer tokens, and ``token_scalars``
keeps them token by token for one response. Logistic
regressions on the features (standardised, regularisation chosen by cross-validation)
say which adapters carry misalignment and which carry the medical context; their
out-of-fold predictions give accuracy and AUROC with confidence intervals.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from emlib.activations import Batch, batches, encode
from emlib.generate import input_device
from emlib.interventions import envoy_at, wrap
from emlib.metrics import bootstrap_auroc, wilson_interval
from emlib.models import decoder_layers


@dataclass(frozen=True)
class Adapter:
    """One rank-1 LoRA adapter: where it sits and its two vectors (A [d_in], B [d_out], scaling folded into B)."""

    name: str  # e.g. "L9.down_proj"
    layer: int
    module: str  # path of the adapted module in the model
    a: torch.Tensor
    b: torch.Tensor


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
                      adapters: list[Adapter], batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Mean A·x over each response's answer tokens: [n_responses, n_adapters], rows in ``samples`` order."""
    system = samples["system"] if "system" in samples else [None] * len(samples)
    encoded = [encode(tokenizer, q, r, s if isinstance(s, str) else None)
               for q, r, s in zip(samples["question"], samples["response"], system)]
    out = np.zeros((len(encoded), len(adapters)))
    starts = range(0, len(encoded), batch_size)
    for start, batch in tqdm(zip(starts, batches(encoded, batch_size, tokenizer.pad_token_id)), total=len(starts),
                             desc="LoRA scalars", unit="batch", disable=not progress):
        scalars = lora_scalars(model, batch, adapters)  # [b, t, n]
        mask = batch.answer[..., None].float()
        out[start : start + len(scalars)] = ((scalars * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy()
    return out


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
    """A cross-validated probe: accuracy and AUROC with 95% CIs, and standardised coefficients per feature."""

    accuracy: float
    accuracy_ci: tuple[float, float]
    auroc: float
    auroc_ci: tuple[float, float]
    coefficients: pd.DataFrame  # index: feature; columns: coef, lo, hi (bootstrap 95% CI)
    n: int
    n_positive: int
    folds: int


def fit_probe(features: np.ndarray, labels: np.ndarray, names: list[str], seed: int = 0, n_boot: int = 100) -> ProbeResult:
    """Logistic regression (standardised features, C by cross-validation, balanced classes) on
    ``features`` [n, k] predicting boolean ``labels`` [n].

    Accuracy and AUROC are out-of-fold (stratified k-fold, k = min(5, minority class size));
    accuracy has a Wilson CI, AUROC a bootstrap CI. Coefficients are those of the model fit on
    all rows, with bootstrap 95% CIs (refits at the chosen C).
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
    auroc_ci = bootstrap_auroc(y, proba, rng, n_boot)
    c = float(np.ravel(cv_model[-1].C_)[0])
    coef = cv_model[-1].coef_[0]
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            m = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", solver="liblinear", max_iter=2000))
            boots.append(m.fit(features[idx], y[idx])[-1].coef_[0])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    table = pd.DataFrame({"coef": coef, "lo": lo, "hi": hi}, index=pd.Index(names, name="adapter"))
    return ProbeResult(correct / len(y), wilson_interval(correct, len(y)), float(roc_auc_score(y, proba)),
                       auroc_ci, table, len(y), int(y.sum()),
                       folds)


def adapter_roles(misalignment: ProbeResult, medical: ProbeResult) -> pd.Series:
    """Each adapter's role from the two probes' coefficient CIs: "general" (misalignment CI excludes 0),
    "medical-specific" (only the medical CI excludes 0), "both", or "neither"."""
    def significant(r: ProbeResult) -> pd.Series:
        return (r.coefficients["lo"] > 0) | (r.coefficients["hi"] < 0)

    mis, med = significant(misalignment), significant(medical)
    roles = np.select([mis & med, mis, med], ["general + medical", "general", "medical-specific"], "neither")
    return pd.Series(roles, index=misalignment.coefficients.index, name="role")


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


def roles_table(misalignment: ProbeResult | None, medical: ProbeResult | None) -> pd.DataFrame:
    """Each adapter's two coefficients and role (``adapter_roles``); NaN and "n/a" where a probe was not fitted
    (None). ``attrs["summary"]`` counts the roles. Chapter 4."""
    fitted = [r for r in (misalignment, medical) if r is not None]
    if not fitted:
        out = pd.DataFrame(columns=["role"]).rename_axis("adapter")
        out.attrs["summary"] = "no probe fitted"
        return out
    out = pd.DataFrame({"misalignment coef": misalignment.coefficients["coef"].round(3) if misalignment else np.nan,
                        "medical coef": medical.coefficients["coef"].round(3) if medical else np.nan,
                        "role": adapter_roles(misalignment, medical) if misalignment and medical
                        else "n/a (a probe was not fitted)"}, index=fitted[0].coefficients.index)
    out.attrs["summary"] = ", ".join(f"{n} {role}" for role, n in out["role"].value_counts().items())
    return out


def b_direction_cosines(adapters: list[Adapter], directions: torch.Tensor) -> pd.Series:
    """Cosine between each adapter's B vector and the mean-diff direction at its layer; ``directions`` [n_layers, d]."""
    return pd.Series([float(torch.nn.functional.cosine_similarity(ad.b, directions[ad.layer], dim=0)) for ad in adapters],
                     index=pd.Index([ad.name for ad in adapters], name="adapter"), name="cosine(B, mean-diff)")


def downstream_cosines(base: torch.Tensor, organism: torch.Tensor, steered: torch.Tensor) -> torch.Tensor:
    """cos(organism − base, steered − base) per layer, from answer-token means [n_layers, d] of the same texts:
    how alike the activation changes induced by the adapters and by steering are, layer by layer. [n_layers]"""
    return torch.nn.functional.cosine_similarity(organism - base, steered - base, dim=-1)
