"""Fuse a choice-task run with the retriever: weight chosen on validation, test touched once.

    python tools/run_eval.py --shortlist --split val recipes/eval/baseline-slm-choice.yml  # validation scores
    python tools/run_eval.py --shortlist recipes/eval/baseline-slm-choice.yml              # test scores
    python tools/fuse.py baseline-slm-choice-shortlist                                     # -> eval/...-fused/

Reads the per-candidate log-likelihoods lm-eval logged for the validation split
(``<workspace>/eval-val/NAME``), picks the fusion weight with the best validation exact match
(``icd10_coder.choice.choose_weight``: 0 = the retriever's order, 1 = the model's) and the softmax
temperature that makes the top candidate's probability a calibrated confidence
(``calibration.fit_temperature``), then applies both to the test samples already logged in
``<workspace>/eval/NAME`` (no model runs again; ``choice.score_shortlist``, the function predict
and the app serve with) and writes ``<workspace>/eval/NAME-fused/``: results and per-sample logs
in lm-eval's layout (scored by ``icd10_coder.scoring``, so the report treats it as any approach),
``fusion.json`` with the weight, the validation curve, the calibration measured on test and where
everything came from, and the scoring record (``scoring.json``, and ``icd10_scoring.json`` in the
adapter's folder) that predict and the app read (``icd10_coder.serving``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from icd10_coder import approach, calibration, choice, serving
from icd10_coder.jsonl import read_jsonl, write_jsonl
from icd10_coder.paths import display_path, make_private, newest
from icd10_coder.scoring import METRICS, score_codes
from icd10_coder.workspace import Workspace

CHOICE_TASK = "icd10_medsynth_choice"
TEST_TASKS = (CHOICE_TASK, "icd10_medsynth_choice_unseen")
VAL_TASK = "icd10_medsynth_choice_val"
FUSED_SUFFIX = serving.FUSED_SUFFIX


def newest_samples(folder: Path, task: str) -> Path | None:
    """lm-eval's newest per-sample log of ``task`` under ``folder``, found as the report finds it."""
    return newest(folder, f"samples_{task}_[0-9]*.jsonl")


def scored_rows(samples: list[dict[str, Any]]) -> list[tuple[list[str], list[float], list[float], str]]:
    """(candidates, model score per candidate, retrieval score per candidate, gold) per sample."""
    rows = []
    for sample in samples:
        doc = sample["doc"]
        candidates = list(doc["candidates"])
        rows.append((candidates, choice.per_char(choice.sample_loglikelihoods(sample), candidates),
                     choice.retrieval_scores(doc), doc["gold_code"]))
    return rows


def scored_samples(samples: list[dict[str, Any]], scoring: choice.Scoring) -> list[list[choice.Scored]]:
    """Each sample's shortlist scored as predict and the app score it."""
    return [choice.score_shortlist(doc["candidates"], choice.sample_loglikelihoods(sample),
                                   choice.retrieval_scores(doc), scoring)
            for sample in samples for doc in [sample["doc"]]]


def calibration_rows(samples: list[dict[str, Any]], scoring: choice.Scoring) -> list[tuple[list[float], bool]]:
    """(fused scores, top candidate right) per sample: what the temperature is fitted on."""
    return [([s.fused for s in scored], bool(scored) and scored[0].code == sample["doc"]["gold_code"])
            for sample, scored in zip(samples, scored_samples(samples, scoring), strict=True)]


def fused_samples(samples: list[dict[str, Any]], scoring: choice.Scoring) -> list[dict[str, Any]]:
    """The test samples re-ranked with the fused score, scored like every answer, with each candidate's
    probability (the report's calibration reads it)."""
    out = []
    for sample, scored in zip(samples, scored_samples(samples, scoring), strict=True):
        gold = sample["doc"]["gold_code"]
        ranked = [s.code for s in scored]
        out.append({"doc_id": sample.get("doc_id"), "doc": sample["doc"], "target": gold,
                    "filtered_resps": [", ".join(ranked)], "probabilities": [round(s.probability, 6) for s in scored],
                    **score_codes(gold, ranked)})
    return out


def confidence_pairs(samples: list[dict[str, Any]]) -> list[tuple[float, bool]]:
    """(top candidate's probability, was it right) per fused sample."""
    return [(s["probabilities"][0], bool(s["exact_match"])) for s in samples if s.get("probabilities")]


def means(samples: list[dict[str, Any]]) -> dict[str, float]:
    """lm-eval's aggregate layout (``metric,filter``: the mean of the per-sample values)."""
    return {f"{m},none": sum(s[m] for s in samples) / len(samples) for m in METRICS} if samples else {}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("name")
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace whose eval/NAME and eval-val/NAME are fused. Default: $ICD10_WORKSPACE, else the "
                   "checkout (the real run).")
def main(name: str, workspace: str | None) -> None:
    """Fuse the choice-task results NAME (e.g. finetuned-slm-choice-shortlist) with the retrieval scores."""
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    test_dir, val_dir = space.eval_dir / name, space.validation_dir / name
    val_log = newest_samples(val_dir, VAL_TASK)
    if val_log is None:
        raise click.ClickException(f"no validation scores in {display_path(val_dir)}: run "
                                   "`tools/run_eval.py --shortlist --split val ...` for the same config first")
    tests = {task: path for task in TEST_TASKS if (path := newest_samples(test_dir, task))}
    if not tests:
        raise click.ClickException(f"no choice-task test scores in {display_path(test_dir)}: run "
                                   "`tools/run_eval.py --shortlist ...` first")
    base = approach.read(test_dir)
    if base is None:
        raise click.ClickException(f"{display_path(test_dir)} has no {approach.RECORD} (written by an older version): "
                                   "run `tools/run_eval.py --shortlist ...` again")
    validation = read_jsonl(val_log)
    weight, curve = choice.choose_weight(scored_rows(validation))
    click.echo(f"fusion weight {weight} (validation exact match {curve[weight]:.3f} over {len(validation)} rows; "
               f"retriever alone {curve[0.0]:.3f}, model alone {curve[1.0]:.3f})")
    weighted = choice.Scoring(normalisation="per_char", fusion_weight=weight)
    calibrator = calibration.fit(calibration_rows(validation, weighted), "temperature",
                                 f"val ({len(validation)} rows)")
    temperature = calibrator.temperature
    scoring = choice.Scoring(normalisation="per_char", fusion_weight=weight, calibrator=calibrator)
    dev_calibration = calibration.measure(confidence_pairs(fused_samples(validation, scoring)))
    click.echo(f"temperature {temperature} (dev ECE {dev_calibration['ece']})")
    out = space.eval_dir / (name + FUSED_SUFFIX)
    out.mkdir(parents=True, exist_ok=True)
    os.umask(0o077)
    recorded = yaml.safe_load((test_dir / "run_config.yml").read_text()) if (test_dir / "run_config.yml").is_file() \
        else {}
    model_args = {**(recorded.get("model_args") or {}), "fusion_weight": weight}
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%S")
    results: dict[str, Any] = {"results": {}, "n-samples": {}, "config": {"model": "fused", "model_args": model_args}}
    pairs: list[tuple[float, bool]] = []
    for task, path in tests.items():
        samples = fused_samples(read_jsonl(path), scoring)
        pairs += confidence_pairs(samples)
        write_jsonl(out / f"samples_{task}_{stamp}.jsonl", samples, private=True)
        results["results"][task] = {"alias": task, **means(samples)}
        results["n-samples"][task] = {"original": len(samples), "effective": len(samples)}
        click.echo(f"{task}: exact match {results['results'][task].get('exact_match,none', 0):.3f} "
                   f"over {len(samples)} rows")
    (out / f"results_{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "run_config.yml").write_text(yaml.safe_dump({**recorded, "approach": out.name, "model_args": model_args},
                                                       sort_keys=False))
    test_calibration = calibration.measure(pairs)
    click.echo(f"test calibration: ECE {test_calibration['ece']} over {test_calibration['n']} rows")
    (out / "fusion.json").write_text(json.dumps({
        "weight": weight, "chosen_on": display_path(val_log), "validation_rows": len(validation),
        "validation_exact_match_by_weight": {str(w): v for w, v in curve.items()},
        "rule": "best validation exact match; ties to the weight nearest 0.5",
        "scores": "weight * minmax(log-likelihood per char) + (1 - weight) * minmax(retrieval score), per shortlist",
        "temperature": temperature, "temperature_rule": "least log loss of top-1 correctness on the validation rows",
        "dev_calibration": dev_calibration, "test_calibration": test_calibration,
        "test_samples": {t: display_path(p) for t, p in tests.items()}}, indent=2) + "\n")
    approach.write(out, approach.fused(base, out.name, {**scoring.as_record(), "chosen_on": "val",
                                                        "validation_rows": len(validation)}))
    adapter = serving.resolve(model_args.get("peft"))
    card_file = serving.resolve((recorded.get("metadata") or {}).get("data_dir")) or space.prepared_shortlist
    card = json.loads((card_file / "data_card.json").read_text()) if (card_file / "data_card.json").is_file() else {}
    if card.get("shortlist"):
        record = serving.scoring_record(
            approach=out.name, base_model=model_args.get("pretrained"), adapter=model_args.get("peft"),
            shortlist=card["shortlist"], scoring=scoring.as_record(),
            dev={"split": "val", "rows": len(validation), "exact_match": curve[weight],
                 "calibration": dev_calibration},
            test_calibration={**test_calibration, "split": "test", "note": "measured after every choice, never used"},
            data_card=display_path(card_file / "data_card.json"),
            refit=f"python tools/fuse.py {name} --workspace {display_path(space.root)}")
        serving.write_record(record, out, adapter if adapter and (adapter / "adapter_config.json").is_file() else None)
    else:
        click.secho(f"no shortlist in {display_path(card_file)}/data_card.json: no scoring record written",
                    fg="yellow", err=True)
    make_private(out)
    click.echo(f"-> {display_path(out)}")


if __name__ == "__main__":
    main()
