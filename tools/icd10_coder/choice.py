"""Choice by likelihood: rank a row's shortlist candidates by the model's log-likelihood of each
answer line, and fuse that ranking with the retriever's.

A small model generating free text copies or invents codes; asked instead how likely each of
the ten known answers is (the lm-eval task ``icd10_medsynth_choice``), it can only pick from
the list. Scores are per character of the answer line (lm-eval's ``acc_norm`` convention), so
a long official description is not penalised for its length.

Fusion: both score lists are min-max normalised within the row's shortlist and mixed,
``weight * model + (1 - weight) * retrieval``; ``weight`` is chosen on the validation split
(:func:`choose_weight`) and then applied once to the test split (``tools/fuse.py``).

This module is the one home of a candidate's score: :func:`score_shortlist` (normalisation, fusion,
probability by the scoring's calibrator, :mod:`icd10_coder.calibration`) is what ``tools/fuse.py``,
the report, ``tools/predict.py`` and the app rank and show; the lm-eval task ranks with the same
:func:`per_char` and :func:`rank`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from icd10_coder.calibration import Calibrator
from icd10_coder.codes import description
from icd10_coder.prompts import render_answer

# Weights tried on the validation split: 0 = the retriever's order, 1 = the model's alone.
WEIGHT_GRID: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(21))


def answer_lines(candidates: Sequence[str]) -> list[str]:
    """Each candidate as the answer line a model is trained to write (prompts/answer.j2)."""
    return [render_answer(code, description(code) or "") for code in candidates]


def per_char(loglikelihoods: Sequence[float], candidates: Sequence[str]) -> list[float]:
    """Log-likelihood per character of each candidate's answer line."""
    return [ll / max(1, len(line)) for ll, line in zip(loglikelihoods, answer_lines(candidates), strict=True)]


# How a candidate's summed log-likelihood becomes its score: per character of the answer line (the
# choice task's default, lm-eval's acc_norm), per token of it, or the plain sum (a probability).
NORMALISATIONS: tuple[str, ...] = ("per_char", "per_token", "sum")


def normalised(loglikelihoods: Sequence[float], candidates: Sequence[str], how: str = "per_char",
               token_counts: Sequence[int] | None = None) -> list[float]:
    """Candidate scores under one of :data:`NORMALISATIONS` (``per_token`` needs ``token_counts``)."""
    if how == "per_char":
        return per_char(loglikelihoods, candidates)
    if how == "sum":
        return [float(ll) for ll in loglikelihoods]
    if how == "per_token":
        if token_counts is None:
            raise ValueError("per_token normalisation needs the answer lines' token counts")
        return [ll / max(1, n) for ll, n in zip(loglikelihoods, token_counts, strict=True)]
    raise ValueError(f"unknown normalisation {how!r} (known: {', '.join(NORMALISATIONS)})")


def best_first(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` best first; ties keep the list's order (the retriever's)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def rank(candidates: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Candidates best first; ties keep the retriever's order (the list's)."""
    return [candidates[i] for i in best_first(scores)]


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 0.0 for v in values]


def fused_scores(model: Sequence[float], retrieval: Sequence[float], weight: float) -> list[float]:
    """``weight`` x the model's normalised scores + (1 - ``weight``) x the retriever's."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight {weight} is outside [0, 1]")
    if not model:
        return []
    return [weight * m + (1 - weight) * r for m, r in zip(_minmax(model), _minmax(retrieval), strict=True)]


def retrieval_scores(doc: dict[str, Any]) -> list[float]:
    """The retriever's score per candidate, as prepare recorded it."""
    scores = doc.get("candidate_scores")
    if not scores or len(scores) != len(doc["candidates"]):
        raise ValueError(f"row {doc.get('id', '?')}: no retriever score for each candidate (prepared by an older "
                         "version): run `make prepare` again")
    return [float(s) for s in scores]


def sample_loglikelihoods(sample: dict[str, Any]) -> list[float]:
    """Per-candidate log-likelihoods from an lm-eval sample log line of the choice task."""
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def predicted_codes(sample: dict[str, Any]) -> list[str]:
    """The codes an lm-eval sample answered, best first: parsed codes of a generation, or the
    candidates ranked by likelihood for the choice task."""
    responses = sample.get("filtered_resps") or [""]
    if isinstance(responses[0], str):
        return [code for code in responses[0].split(", ") if code]
    candidates = sample["doc"]["candidates"]
    return rank(candidates, per_char(sample_loglikelihoods(sample), candidates))


def split_continuations(tokenize: Any, context: str, continuations: Sequence[str]) -> tuple[list[int],
                                                                                          list[list[int]]]:
    """Token ids of ``context`` and of each continuation exactly as lm-eval splits them
    (``TemplateLM._encode_pair``): the context's trailing whitespace moves to the continuation, and the
    continuation is what tokenising context + continuation adds to the context's tokens. Predict and the
    choice task then score the same tokens. ``tokenize``: text -> ids, no special tokens."""
    stripped = context.rstrip()
    moved = context[len(stripped):]
    context_ids = tokenize(stripped)
    return context_ids, [tokenize(stripped + moved + text)[len(context_ids):] for text in continuations]


@dataclass(frozen=True)
class PromptOpenings:
    """The key/value caches of the openings every prompt starts with (``prompts.prompt_openings``: system prompt
    and the user message's header, ~130 tokens), computed once: a prompt that starts with one runs only the rest.
    Read-only: each use copies the cache it starts from."""

    openings: tuple[tuple[tuple[int, ...], Any], ...]

    @classmethod
    def compute(cls, model: Any, openings: Sequence[Sequence[int]], device: Any = "cpu") -> PromptOpenings:
        import torch

        cached = []
        for tokens in openings:
            with torch.no_grad():
                out = model(input_ids=torch.tensor([list(tokens)], device=device), use_cache=True, logits_to_keep=1)
            cached.append((tuple(tokens), out.past_key_values))
        return cls(tuple(sorted(cached, key=lambda opening: -len(opening[0]))))  # longest first: split takes it

    def split(self, context: Sequence[int]) -> tuple[Any, list[int]]:
        """(a copy of the longest matching opening's cache, the tokens still to run); (None, the whole context) when
        ``context`` starts with none of them."""
        import copy

        for tokens, cache in self.openings:
            if len(context) > len(tokens) and tuple(context[: len(tokens)]) == tokens:
                return copy.deepcopy(cache), list(context[len(tokens):])
        return None, list(context)


def continuation_loglikelihoods(model: Any, context: list[int], continuations: list[list[int]], device: Any = "cpu",
                                openings: PromptOpenings | None = None) -> list[tuple[float, bool]]:
    """Sum log-probability (and greedy flag) of each continuation after ``context``. The context runs once (from
    the cache of the opening it starts with, ``openings``); then every continuation runs in one packed sequence
    over its cache, each token seeing the context and the earlier tokens of its own continuation only (a block
    mask; positions restart after the context for each): no padding and no copies of the context's cache."""
    import torch
    import torch.nn.functional as F

    cache, rest = openings.split(context) if openings is not None else (None, list(context))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([rest], device=device), past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
    first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every continuation's first token
    packed = [token for tokens in continuations for token in tokens[:-1]]
    logits = None
    if packed:
        owner = torch.tensor([row for row, tokens in enumerate(continuations) for _ in tokens[:-1]], device=device)
        step = torch.tensor([i for tokens in continuations for i in range(len(tokens) - 1)], device=device)
        own_past = (owner[:, None] == owner[None, :]) & (step[:, None] >= step[None, :])
        seen = torch.cat([torch.ones((len(packed), len(context)), dtype=torch.bool, device=device), own_past], dim=1)
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill(~seen, torch.finfo(dtype).min)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([packed], device=device), attention_mask=mask[None, None],
                           position_ids=(step + len(context))[None], past_key_values=out.past_key_values,
                           use_cache=True).logits[0]
    answers, offset = [], 0
    for tokens in continuations:
        steps = [first]
        if len(tokens) > 1:
            steps += list(F.log_softmax(logits[offset: offset + len(tokens) - 1].float(), dim=-1))
            offset += len(tokens) - 1
        total = sum(float(step[token]) for step, token in zip(steps, tokens, strict=True))
        greedy = all(int(step.argmax()) == token for step, token in zip(steps, tokens, strict=True))
        answers.append((total, greedy))
    return answers


def exact_rate(rows: Sequence[tuple[list[str], list[float], list[float], str]], weight: float) -> float:
    """Share of (candidates, model scores, retrieval scores, gold) rows whose fused top-1 is the gold code."""
    hits = sum(bool(c) and rank(c, fused_scores(m, r, weight))[0] == gold for c, m, r, gold in rows)
    return hits / len(rows) if rows else 0.0


def choose_weight(rows: Sequence[tuple[list[str], list[float], list[float], str]],
                  grid: Sequence[float] = WEIGHT_GRID) -> tuple[float, dict[float, float]]:
    """The weight with the best validation exact match; ties go to the one nearest 0.5 (an even
    mix), because a small validation split leaves wide plateaus. Returns (weight, curve)."""
    if not rows:
        raise ValueError("no validation rows to choose the fusion weight on")
    curve = {w: round(exact_rate(rows, w), 4) for w in grid}
    best = max(curve.values())
    weight = min((w for w, v in curve.items() if v == best), key=lambda w: (abs(w - 0.5), w))
    return weight, curve


# ---------------------------------------------------------------- the served score: one function for all

@dataclass(frozen=True)
class Scoring:
    """Everything that turns a shortlist's log-likelihoods into the served ranking and probabilities, chosen
    on the dev split (``tools/fuse.py``) or on out-of-fold rows (``tools/calibrate.py``) and stored with the
    adapter (``icd10_coder.serving``)."""

    normalisation: str = "per_char"
    fusion_weight: float = 1.0  # 1: the model's order alone; 0: the retriever's
    calibrator: Calibrator = Calibrator()  # fused scores -> probabilities (icd10_coder.calibration)

    @property
    def temperature(self) -> float:
        return self.calibrator.temperature

    def as_record(self) -> dict[str, Any]:
        return {"normalisation": self.normalisation, "fusion_weight": self.fusion_weight,
                "temperature": self.calibrator.temperature, "calibration": self.calibrator.as_record()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Scoring:
        missing = [key for key in ("normalisation", "fusion_weight", "temperature", "calibration") if key not in record]
        if missing:
            raise ValueError(f"scoring record lacks {missing}: written by an older version; run tools/fuse.py again")
        calibrator = Calibrator.from_record(record["calibration"])
        if calibrator.temperature != float(record["temperature"]):
            raise ValueError(f"scoring record: temperature {record['temperature']} differs from its calibration's "
                             f"{calibrator.temperature}")
        return cls(normalisation=str(record["normalisation"]), fusion_weight=float(record["fusion_weight"]),
                   calibrator=calibrator)


@dataclass(frozen=True)
class Scored:
    """One candidate of a scored shortlist."""

    code: str
    fused: float
    probability: float


def shortlist_fused(candidates: Sequence[str], loglikelihoods: Sequence[float], retrieval: Sequence[float],
                    scoring: Scoring, token_counts: Sequence[int] | None = None) -> list[float]:
    """Each candidate's fused score (list order) under ``scoring``'s normalisation and weight."""
    model = normalised(loglikelihoods, candidates, scoring.normalisation, token_counts)
    return fused_scores(model, retrieval, scoring.fusion_weight)


def score_shortlist(candidates: Sequence[str], loglikelihoods: Sequence[float], retrieval: Sequence[float],
                    scoring: Scoring, token_counts: Sequence[int] | None = None) -> list[Scored]:
    """The candidates best first with their fused score and probability: what fuse, the report, predict and the
    app all rank and show (ties keep the retriever's order)."""
    fused = shortlist_fused(candidates, loglikelihoods, retrieval, scoring, token_counts)
    probability = scoring.calibrator.probabilities(fused)
    return [Scored(candidates[i], round(fused[i], 6), probability[i]) for i in best_first(fused)]
