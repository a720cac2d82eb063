"""Which model is served and how it is loaded: ``make demo``'s served approach or a named adapter, its base model,
the shortlist and scoring it was evaluated with, the device. ``tools/predict.py`` and the app load through here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icd10_coder import serving
from icd10_coder.choice import Scoring
from icd10_coder.dialogue_input import PredictionError
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path
from icd10_coder.predictor import Predictor, Shortlister, Suggester, VllmPredictor
from icd10_coder.prompts import PROMPT_RECORD
from icd10_coder.serving import SCORING_RECORD
from icd10_coder.workspace import DEMO_WORKSPACE, SERVING_WORKSPACE, Workspace

# What `make demo` trains on real rows; a real run's adapter is passed explicitly (outputs/adapters/qlora).
DEFAULT_ADAPTER = Workspace.at(DEMO_WORKSPACE).adapters_dir / "demo-cpu-shortlist"


# What is served by default: the serving model (`make serving-model`: trained on every real row, calibrated out of
# fold) when it exists, else the approach `make demo` found best on dev.
SERVING_MODEL = Workspace.at(SERVING_WORKSPACE).serving_file
DEMO_SERVING = Workspace.at(DEMO_WORKSPACE).serving_file


def default_serving() -> Path:
    """The serving model's record when `make serving-model` has written one, else make demo's."""
    return SERVING_MODEL if SERVING_MODEL.is_file() else DEMO_SERVING


def served_model_options(command: Any) -> Any:
    """The --adapter, --base-model, --serving and --force options that predict and the app share (what to serve)."""
    import click

    options = [
        click.option("--adapter", default=None, metavar="DIR|none",
                     help=f"LoRA adapter folder (its {SCORING_RECORD}, written by tools/fuse.py, sets the scoring). "
                          f"Default: the serving model ({display_path(SERVING_MODEL)}, make serving-model), else the "
                          f"approach make demo served ({display_path(DEMO_SERVING)}), else "
                          f"{display_path(DEFAULT_ADAPTER)}; 'none' for the base model alone."),
        click.option("--base-model", default=None,
                     help="Base model: a local folder, or a hub id already in the local cache (the recipe's "
                          f"base_model). Default: the served record's, else {display_path(EMBEDDED_MODEL)}."),
        click.option("--serving", "serving_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="The served approach when --adapter is not given: a serving.json (make demo's) or a fused "
                          f"result's scoring.json. Default: {display_path(SERVING_MODEL)} when it exists, else "
                          f"{display_path(DEMO_SERVING)}."),
        click.option("--force", is_flag=True,
                     help="Serve even where --base-model or --shortlist-k differ from what the served record was "
                          "evaluated with; every answer is then marked 'not evaluated'."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def pick_device(choice: str) -> str:
    """``auto``: CUDA when a GPU is visible, else the CPU."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise PredictionError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return choice


def prompt_variant(adapter: Path | None, shortlist: bool | None) -> tuple[dict[str, Any], bool]:
    """The adapter's recorded prompt variant, and whether to use the shortlist; a contradiction is an error."""
    record_file = adapter / PROMPT_RECORD if adapter else None
    record = json.loads(record_file.read_text()) if record_file and record_file.is_file() else {}
    trained_with = record.get("prompt_variant")
    if trained_with and shortlist is not None and shortlist != (trained_with == "shortlist"):
        wanted = "with" if shortlist else "without"
        raise PredictionError(f"adapter {adapter} was trained on {trained_with} prompts ({record_file.name}); "
                              f"prompting it {wanted} the shortlist would not match its training. Drop "
                              f"--{'' if shortlist else 'no-'}shortlist.")
    return record, trained_with == "shortlist" if shortlist is None else shortlist


def resolve_adapter(adapter: str | None) -> Path | None:
    """None: make demo's adapter when it exists; 'none': the base model alone; else a folder that must exist."""
    if adapter is None:
        return DEFAULT_ADAPTER if (DEFAULT_ADAPTER / "adapter_config.json").is_file() else None
    if adapter.lower() == "none":
        return None
    path = Path(adapter)
    if not (path / "adapter_config.json").is_file():
        raise PredictionError(f"adapter {path}: not found (no adapter_config.json)")
    return path


def served_record(adapter: str | None, serving_file: Path | None = None) -> dict[str, Any] | None:
    """The scoring record to serve: ``make demo``'s choice (``serving.json``) when no adapter is named, else the
    named adapter's own record (``icd10_scoring.json``); None: no record (generation)."""

    serving_file = serving_file or default_serving()
    if adapter is None:
        if serving_file.is_file():
            return serving.read_record(serving_file)
        return serving.read_record(DEFAULT_ADAPTER) if DEFAULT_ADAPTER.is_dir() else None
    if adapter.lower() == "none":
        return None
    return serving.read_record(Path(adapter))


def load_suggester(base_model: str | None, adapter: str | None, *, constrain: bool = True, device: str = "auto",
                   engine: str = "hf", shortlist: bool | None = None, shortlist_k: int | None = None,
                   workspace: Workspace | None = None, serving_file: Path | None = None,
                   generate: bool = False, force: bool = False) -> Suggester:
    """Check the model folders, load the model, and set up the shortlist and scoring it was evaluated with.

    With no ``adapter``, the served approach (``serving_file``, default :func:`default_serving`): its base model,
    adapter (or none), shortlist and scoring. ``generate``: beam search instead of the recorded choice. A
    ``base_model`` or ``shortlist_k`` other than the record's is refused unless ``force``, which marks every answer
    "not evaluated": the record's weight and temperature were fitted for its own model and K."""

    record = None if generate else served_record(adapter, serving_file)
    overrides = []
    if record is not None:
        if shortlist_k is not None and shortlist_k != record["shortlist_k"]:
            overrides.append(f"--shortlist-k {shortlist_k} (evaluated with {record['shortlist_k']})")
        recorded_base = record.get("base_model") and serving.resolve_model(record["base_model"])
        if base_model is not None and recorded_base and Path(base_model).resolve() != Path(recorded_base).resolve():
            overrides.append(f"--base-model {base_model} (evaluated with {record['base_model']})")
    if record is not None and (stale := serving.stale_files(record)):
        raise PredictionError(f"{record['approach']}'s scoring record no longer matches what it was fitted with "
                              f"({'; '.join(stale)}): run `{record['refit']}`")
    if overrides and not force:
        raise PredictionError(f"{record['approach']} was evaluated with other settings than {'; '.join(overrides)}: "
                              "drop the option, or pass --force to serve it anyway (every answer is then marked "
                              "'not evaluated')")
    if record is not None and adapter is None:
        adapter = record.get("adapter") and str(serving.resolve(record["adapter"])) or "none"
    if record is not None and record.get("base_model"):
        base_model = base_model or serving.resolve_model(record["base_model"])
    base_model = base_model or str(EMBEDDED_MODEL)
    adapter_path = resolve_adapter(adapter)
    looks_local = base_model.startswith((".", "/")) or Path(base_model).exists()
    if looks_local and not (Path(base_model) / "config.json").is_file():
        raise PredictionError(f"base model {base_model}: not found (no config.json); run `make setup`")
    if record is not None and shortlist is False:
        raise PredictionError(f"{record['approach']} chooses among the retrieval shortlist, as it was evaluated; "
                              "--no-shortlist needs --generate (the model then writes a code itself)")
    prompt_record, use_shortlist = prompt_variant(adapter_path, True if record else shortlist)
    if record is not None:  # the served record wins: it is what was evaluated
        prompt_record = {**prompt_record, "shortlist_k": record["shortlist_k"], "retriever": record["retriever"],
                         "evidence_window": record.get("evidence_window", 0)}
    shortlister = None
    if use_shortlist:
        prepared = REPO_ROOT / prompt_record["prepared_data"] if prompt_record.get("prepared_data") else None
        shortlister = Shortlister(shortlist_k or prompt_record.get("shortlist_k") or 10,
                                  prepared / "train.jsonl" if prepared else None,
                                  (workspace or Workspace.at()).retrieval_cache, prompt_record.get("retriever"),
                                  prompt_record.get("evidence_window") or 0)
    if engine == "vllm":
        predictor: Predictor | VllmPredictor = VllmPredictor(base_model, adapter_path)
    else:
        predictor = Predictor(base_model, adapter_path, constrain, pick_device(device))
    scoring = Scoring.from_record(record) if record is not None else None
    not_evaluated = f"not evaluated: {'; '.join(overrides)}" if overrides else None
    return Suggester(predictor, shortlister, base_model, adapter_path, scoring, record, not_evaluated)
