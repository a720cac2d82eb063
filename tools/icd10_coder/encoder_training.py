"""Fine-tuning the dense retriever's query encoder with sentence-transformers (``tools/train_encoder.py``).

The dense ranking (:mod:`icd10_coder.retrieval`) scores a code by its best-matching dialogue sentence.
Stock sentence-transformers losses compare one text with one text; here a dialogue is many sentences and
the target is one of ~74,700 fixed code vectors, so the loss is this project's own
(:class:`BestSentenceLoss`), plugged into sentence-transformers' trainer, data collator, evaluator
interface and model format. Only the query side learns; the code vectors are the base encoder's cached
ones, which keeps the code index as it is (no re-encoding) and the served retriever's cost unchanged.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from icd10_coder.codes import billable_codes
from icd10_coder.dialogue import CUE_PATTERN, sentences
from icd10_coder.retrieval import code_description_vectors, read_training_pairs

RECIPE_KEYS = ("base_encoder", "output_dir", "train_data", "dev_data", "sentences_per_dialogue", "scale",
               "num_train_epochs", "per_device_train_batch_size", "learning_rate", "warmup_ratio", "weight_decay",
               "seed")


@dataclass(frozen=True)
class EncoderRecipe:
    """The keys of ``recipes/encoder-*.yml`` (see that file for what each means)."""

    base_encoder: str
    output_dir: str
    train_data: str
    dev_data: str | None = None
    sentences_per_dialogue: int = 16
    scale: float = 20.0
    num_train_epochs: float = 1
    per_device_train_batch_size: int = 8
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderRecipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown encoder recipe keys {unknown} (known: {', '.join(sorted(known))})")
        missing = [k for k in ("base_encoder", "output_dir", "train_data") if not values.get(k)]
        if missing:
            raise ValueError(f"the encoder recipe needs {', '.join(missing)}")
        return cls(**values)


def pick_sentences(dialogue: str, count: int, rng: random.Random) -> list[str]:
    """``count`` sentences of a dialogue for one training step: cue sentences first, then others at random,
    repeated when the dialogue has fewer."""

    found = sentences(dialogue)
    cues = [s for s in found if CUE_PATTERN.search(s)]
    others = [s for s in found if not CUE_PATTERN.search(s)]
    rng.shuffle(cues)
    rng.shuffle(others)
    chosen = (cues + others)[:count]
    return [chosen[i % len(chosen)] for i in range(count)]


def training_table(pairs: list[tuple[str, str]], codes: dict[str, int], count: int,
                   seed: int) -> tuple[dict[str, list[Any]], int]:
    """Columns ``sentence_0`` ... ``sentence_{count-1}`` and ``label`` (the gold code's row in the code matrix);
    rows whose gold code is not in the code set are left out (returned: how many)."""
    rng = random.Random(seed)
    table: dict[str, list[Any]] = {f"sentence_{i}": [] for i in range(count)}
    table["label"] = []
    skipped = 0
    for dialogue, code in pairs:
        if code not in codes:
            skipped += 1
            continue
        for i, sentence in enumerate(pick_sentences(dialogue, count, rng)):
            table[f"sentence_{i}"].append(sentence)
        table["label"].append(codes[code])
    return table, skipped


def best_sentence_loss(model: Any, code_vectors: Any, scale: float) -> Any:
    """:class:`BestSentenceLoss` (built here so torch loads only when training)."""
    import torch
    from torch import nn

    class BestSentenceLoss(nn.Module):
        """Softmax over every code of ``scale`` x (best cosine of the dialogue's sentences with the code's vector).

        ``sentence_features``: one tokenized batch per sentence column; ``labels``: the gold code's row."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.scale = scale
            self.register_buffer("codes", torch.as_tensor(code_vectors, dtype=torch.float32), persistent=False)

        def forward(self, sentence_features: list[dict[str, Any]], labels: Any) -> Any:
            vectors = torch.stack([self.model(features)["sentence_embedding"] for features in sentence_features], 1)
            vectors = nn.functional.normalize(vectors, dim=-1)  # batch x sentences x dim
            best = (vectors @ self.codes.to(vectors.device).T).amax(dim=1)  # batch x codes
            return nn.functional.cross_entropy(best * self.scale, labels)

    return BestSentenceLoss()


def recall_evaluator(pairs: list[tuple[str, str]], codes: dict[str, int], code_vectors: Any,
                     ks: tuple[int, ...] = (1, 10)) -> Any:
    """A sentence-transformers evaluator: recall@k of the gold code among all codes on ``pairs``, scoring each
    code by its best sentence, as the retriever's dense ranking does (all of each dialogue's sentences)."""
    from sentence_transformers.base.evaluation import SentenceEvaluator

    kept = [(sentences(d), codes[c]) for d, c in pairs if c in codes]

    class BestSentenceRecall(SentenceEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = f"recall@{ks[-1]}"

        def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1,
                     steps: int = -1) -> dict[str, float]:
            hits = dict.fromkeys(ks, 0)
            for group, gold in kept:
                vectors = model.encode(group, normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False)
                best = (vectors @ code_vectors.T).max(axis=0)
                rank = int((best > best[gold]).sum())
                for k in ks:
                    hits[k] += rank < k
            metrics = {f"recall@{k}": hits[k] / max(1, len(kept)) for k in ks}
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return BestSentenceRecall()


def train_encoder(recipe: EncoderRecipe, train_data: Path, dev_data: Path | None, output_dir: Path,
                  base_encoder: Path) -> dict[str, Any]:
    """Fine-tune the query encoder; save it (sentence-transformers format) with ``encoder_training.json``."""
    import tempfile
    import time

    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments

    code_list = tuple(billable_codes())
    code_vectors = code_description_vectors(code_list)  # the base encoder's, cached by `make setup`
    positions = {code: i for i, code in enumerate(code_list)}
    pairs = read_training_pairs(train_data)
    table, skipped = training_table(pairs, positions, recipe.sentences_per_dialogue, recipe.seed)
    if not table["label"]:
        raise ValueError(f"{train_data}: no row with a billable gold code to train on")
    model = SentenceTransformer(str(base_encoder), device=None)
    dev_pairs = read_training_pairs(dev_data) if dev_data and dev_data.is_file() else []
    evaluator = recall_evaluator(dev_pairs, positions, code_vectors) if dev_pairs else None
    before = evaluator(model) if evaluator else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="encoder-trainer-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=recipe.num_train_epochs,
            per_device_train_batch_size=recipe.per_device_train_batch_size, learning_rate=recipe.learning_rate,
            warmup_steps=recipe.warmup_ratio,  # a float below 1: a share of the steps
            weight_decay=recipe.weight_decay, seed=recipe.seed,
            save_strategy="no", eval_strategy="no", logging_steps=10, report_to="none",
            dataloader_num_workers=0, disable_tqdm=False)
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_dict(table),
            loss=best_sentence_loss(model, code_vectors, recipe.scale))
        trainer.train()
    seconds = time.perf_counter() - started
    after = evaluator(model) if evaluator else None
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    record = {"recipe": {f.name: getattr(recipe, f.name) for f in fields(recipe)},
              "train_rows": len(table["label"]), "train_rows_without_billable_code": skipped,
              "dev_rows": len(dev_pairs), "dev_recall_before": before, "dev_recall_after": after,
              "train_seconds": round(seconds, 1), "sides": "query (code vectors: the base encoder's, fixed)"}
    (output_dir / "encoder_training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
