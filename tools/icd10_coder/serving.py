"""What predict and the app serve: the scoring record that travels with an approach, and the demo's choice.

``tools/fuse.py`` writes a **scoring record** for every fused choice approach: the base model, the adapter,
the shortlist's K and retriever settings (from the prepared data's card), and the score's normalisation,
fusion weight and calibration temperature (chosen on the dev split), plus the calibration measured on
the test split. It lands beside the results (``eval/NAME-fused/scoring.json``) and, for a finetuned
approach, in the adapter's folder (``icd10_scoring.json``), so ``--adapter DIR`` alone serves the
approach as it was evaluated. ``make demo`` names the approach best on dev in
``<workspace>/serving.json``, the default of ``tools/predict.py`` and ``make app``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icd10_coder.paths import REPO_ROOT, display_path

SCORING_RECORD = "icd10_scoring.json"
FUSED_SUFFIX = "-fused"  # tools/fuse.py writes eval/<name>-fused/
RECORD_VERSION = 2  # 2: the calibrator and the hashes of what the record was fitted with


def file_hash(path: Path) -> str:
    """SHA-256 of a file (hex, first 16 characters): enough to tell a retrained file from the one recorded."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def fitted_files(adapter: str | None, retriever: dict[str, Any], data_card: str | None) -> dict[str, str]:
    """The files a scoring record was fitted with, by role, as recorded paths: the adapter's weights, the
    fine-tuned query encoder's weights and the prepared data's card."""
    files = {"adapter": f"{adapter}/adapter_model.safetensors" if adapter else None,
             "encoder": f"{retriever['encoder']}/model.safetensors" if retriever.get("encoder") else None,
             "data_card": data_card}
    return {role: path for role, path in files.items() if path}


def scoring_record(*, approach: str, base_model: str, adapter: str | None, shortlist: dict[str, Any],
                   scoring: dict[str, Any], dev: dict[str, Any], test_calibration: dict[str, Any],
                   data_card: str | None, refit: str) -> dict[str, Any]:
    """One served approach, everything that shapes its prompt or score, with where each value was chosen, and
    the hashes of the files it was fitted with (``refit``: the command that writes it again)."""
    files = fitted_files(adapter, shortlist["retriever"], data_card)
    return {"version": RECORD_VERSION, "approach": approach, "base_model": base_model, "adapter": adapter,
            "shortlist_k": shortlist["k"], "retriever": shortlist["retriever"],
            "evidence_window": shortlist.get("evidence_window", 0), **scoring,
            "chosen_on": dev, "test_calibration": test_calibration,
            "fitted_with": {role: {"path": path, "sha256": file_hash(resolve(path))} for role, path in files.items()},
            "refit": refit}


def served_by(record: dict[str, Any]) -> str:
    """What is serving, in one line for the page, the CLI and the audit log: the approach, what it was trained
    on, where its choices and its confidence's calibration come from."""
    trained = record.get("trained_on")
    lora = trained.get("lora_rows") if trained else None
    what = (f"the serving model ({record['approach']}), trained on {trained['rows']} real rows"
            + (f" (the LoRA on {lora} of them)" if lora and lora != trained["rows"] else "")
            if trained else record["approach"])
    chosen = record["chosen_on"]
    calibrator = record["calibration"]
    return (f"{what}; scoring chosen on {chosen['split']} ({chosen['rows']} rows); confidence: "
            f"{calibrator['method']} calibration fitted on {calibrator['fitted_on']}")


def describe_serving_model(record: dict[str, Any]) -> list[str]:
    """The serving model in Markdown lines for GUIDE (``tools/serving_model.py`` writes them from its record): what
    it learned from, what the training cost, how it scores, and the out-of-fold figures that stand for it."""
    trained = record["trained_on"]
    seconds = "; ".join(f"{step}: {value / 60:.1f} min" for step, value in trained.get("seconds", {}).items())
    chosen, measured = record["chosen_on"], record["test_calibration"]
    low, high = measured["ece_95ci"]
    return [
        f"- served: **{record['approach']}**, trained on {trained['rows']} real rows ({', '.join(trained['files'])}); "
        f"the LoRA on {trained['lora_rows']} of them"
        + (f", adapter `{record['adapter']}`" if record["adapter"] else ""),
        f"- training: {seconds}; {trained['minutes']} min in all"
        + (f" ({trained['machine']})" if trained.get("machine") else ""),
        f"- scoring: {record['normalisation']} log-likelihood, fusion weight {record['fusion_weight']}, "
        f"{record['calibration']['method']} calibration, all fitted on {record['calibration']['fitted_on']}",
        f"- what stands for its accuracy (no row is left to test it on): top-1 right {measured['accuracy']:.3f} on "
        f"{measured['n']} out-of-fold rows, cross-fitted (each fold's rows scored as fitted on the other folds; "
        f"{chosen['exact_match']:.3f} with the served weight, chosen on all {chosen['rows']} of them: optimistic); "
        f"ECE {measured['ece']:.3f} [{low:.3f}, {high:.3f}]",
    ]


def stale_files(record: dict[str, Any]) -> list[str]:
    """The recorded files that are missing or changed since the record was fitted (e.g. a retrained adapter)."""
    stale = []
    for role, recorded in record["fitted_with"].items():
        path = resolve(recorded["path"])
        if not path.is_file():
            stale.append(f"{role} {recorded['path']} is missing")
        elif file_hash(path) != recorded["sha256"]:
            stale.append(f"{role} {recorded['path']} changed since the record was fitted")
    return stale


def write_record(record: dict[str, Any], results_dir: Path, adapter_dir: Path | None = None) -> None:
    """The record beside the results (``scoring.json``) and in the adapter's folder (``icd10_scoring.json``)."""
    text = json.dumps(record, indent=2) + "\n"
    (results_dir / "scoring.json").write_text(text)
    if adapter_dir is not None:
        (adapter_dir / SCORING_RECORD).write_text(text)


def read_record(path: Path) -> dict[str, Any] | None:
    """A scoring record (a file, an adapter folder or a fused results folder holding one); None when none."""
    file = next((f for f in (path / SCORING_RECORD, path / "scoring.json") if f.is_file()), path) if path.is_dir() \
        else path
    if not file.is_file():
        return None
    record = json.loads(file.read_text())
    if record.get("version") != RECORD_VERSION:
        raise ValueError(f"{display_path(file)}: scoring record version {record.get('version')!r}, this code reads "
                         f"{RECORD_VERSION}; run tools/fuse.py again")
    return record


def best_on_dev(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record with the best dev exact match; a tie goes to the finetuned approach (it is what the
    project trains; the dev split cannot tell them apart), then to the first."""
    if not records:
        raise ValueError("no scoring records to choose from: run tools/fuse.py first")
    return max(records, key=lambda r: (r["chosen_on"]["exact_match"], r.get("adapter") is not None))


def write_serving(path: Path, record: dict[str, Any], candidates: list[dict[str, Any]]) -> Path:
    """``path`` (a workspace's ``serving.json``): the chosen record and the dev figures of every candidate."""
    chosen = {**record, "why": "best exact match on the dev split of the approaches below (tie: finetuned)",
              "compared_on_dev": {r["approach"]: r["chosen_on"]["exact_match"] for r in candidates}}
    path.write_text(json.dumps(chosen, indent=2) + "\n")
    return path


def resolve(path_text: str | None) -> Path | None:
    """A recorded path (relative to the checkout, as every record stores it) as a path on this machine."""
    if not path_text:
        return None
    path = Path(path_text)
    return path if path.is_absolute() else REPO_ROOT / path


def resolve_model(name: str) -> str:
    """A recorded base model: a folder relative to the checkout when it exists there, else as recorded
    (a hub id such as ``HuggingFaceTB/SmolLM2-1.7B-Instruct``, loaded from the local cache)."""
    local = resolve(name)
    return str(local) if local is not None and local.exists() else name
