"""Dialogue in, ranked ICD-10-CM codes out: what a doctor-facing integration calls.

    python tools/predict.py dialogue.txt                 # one dialogue from a file
    cat dialogue.txt | python tools/predict.py -         # from stdin
    python tools/predict.py batch.jsonl --json           # one {"dialogue": ...} per line

The predictor lives in ``icd10_coder.predictor`` (the app, ``make app``, uses the same one):
same prompt templates, dialogue clean-up, shortlist and scoring as training and evaluation.
By default it serves what ``make demo`` evaluated best on dev (``<demo workspace>/serving.json``),
or the scoring record of ``--adapter DIR`` (``icd10_scoring.json``, written by ``tools/fuse.py``):
the retrieval shortlist, one prompt pass scoring every candidate (choice by likelihood), fusion
with the retriever and a probability calibrated on dev (``icd10_coder.choice.score_shortlist``);
below 0.3 it says "not sure — search the codes". Without a record (or with ``--generate``) the
model generates: with --constrain (default) decoding may only start with a real billable
ICD-10-CM code; beam search gives the ranked alternatives and each code's beam share (its share
of the beams' probability mass; not calibrated, so no confidence and no band). On a GPU
(``--device auto``) the model runs in bf16 (fp16 on T4/V100) and JSONL input is generated
in batches (``--batch-size``); ``--engine vllm`` hands large batches to vLLM.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from icd10_coder.dialogue_input import PredictionError, read_dialogues
from icd10_coder.loading import load_suggester, served_model_options
from icd10_coder.offline import apply_offline_env
from icd10_coder.predictor import Predictor
from icd10_coder.prompts import PROMPT_RECORD
from icd10_coder.workspace import Workspace


def human(result: dict[str, Any]) -> str:
    lines = [f"{c['rank']}. {c['code']:<9} {c['description'] or '(not in ICD-10-CM)'}  [{c['validity']}]"
             + (f"  confidence {c['confidence']:.2f}" if c.get("confidence") is not None else "")
             + (f"  beam share {c['beam_share']:.2f}" if c.get("beam_share") is not None else "")
             for c in result["codes"]] or ["(no ICD-10-CM code in the model's answer)"]
    if result.get("not_evaluated"):
        lines.append(f"NOT EVALUATED — {result['not_evaluated']}; the confidence and band do not apply")
    if result.get("scored_by"):
        verdict = "not sure — search the codes" if result.get("not_sure") else f"{result['band']} confidence"
        served = [f"served by {result['served_by']}"] if result.get("served_by") else []
        return "\n".join(lines + [f"{verdict} ({result['scored_by']})", *served])
    return "\n".join(lines + [f"model answer: {result['raw_answer']!r}"])


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("source", metavar="FILE|-")
@served_model_options
@click.option("--generate", is_flag=True,
              help="Generate with beam search instead of the recorded choice by likelihood (slower on a CPU).")
@click.option("--top-k", type=click.IntRange(1, 10), default=3, show_default=True, help="How many ranked codes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dialogue instead of text.")
@click.option("--constrain/--no-constrain", default=True, show_default=True,
              help="Only let the model start its answer with a real billable ICD-10-CM code (hf engine).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the GPU when one is visible (bf16, or fp16 on T4/V100), else the CPU (fp32).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Dialogues per generate call for JSONL input. Default: 8 on a GPU, 1 on the CPU.")
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="vllm: large batches on a GPU (greedy answers and their alternatives; no --constrain).")
@click.option("--shortlist/--no-shortlist", default=None,
              help="Put the retrieval shortlist in the prompt. Default: as the adapter was trained "
                   f"({PROMPT_RECORD} in its folder); a contradiction is refused.")
@click.option("--shortlist-k", type=click.IntRange(1, 50), default=None,
              help="Candidates in the shortlist. Default: the adapter's, else 10.")
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace for the retrieval index cache. Default: $ICD10_WORKSPACE, else the checkout.")
def main(source: str, adapter: str | None, base_model: str | None, serving_file: Path | None, force: bool,
         generate: bool,
         top_k: int, as_json: bool, constrain: bool, device: str, batch_size: int | None, engine: str,
         shortlist: bool | None, shortlist_k: int | None, workspace: str | None) -> None:
    """Suggest ranked ICD-10-CM codes for doctor-patient dialogue(s) in FILE (or '-' for stdin)."""
    apply_offline_env(hub_offline=True)
    try:
        dialogues, batch = read_dialogues(source)
        if engine == "vllm" and constrain:
            click.echo("note: --engine vllm decodes without the code constraint (--no-constrain)", err=True)
        suggester = load_suggester(base_model, adapter, constrain=constrain, device=device, engine=engine,
                                   shortlist=shortlist, shortlist_k=shortlist_k, workspace=Workspace.at(workspace),
                                   generate=generate or engine == "vllm",
                                   serving_file=serving_file, force=force)
    except (PredictionError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    on_gpu = isinstance(suggester.predictor, Predictor) and suggester.predictor.device == "cuda"
    # vLLM schedules a whole batch itself; hf: 8 per generate call on a GPU, 1 on the CPU.
    size = batch_size or (max(1, len(dialogues)) if engine == "vllm" else 8 if on_gpu else 1)
    started = time.perf_counter()
    with tqdm(total=len(dialogues), desc="predict", unit="dialogue", disable=not batch, file=sys.stderr) as bar:
        for first in range(0, len(dialogues), size):
            chunk = dialogues[first:first + size]
            for result in suggester.suggest(chunk, top_k):
                click.echo(json.dumps(result, ensure_ascii=False) if as_json else human(result) + ("\n" if batch
                                                                                                   else ""))
            bar.update(len(chunk))
    if batch:
        elapsed = time.perf_counter() - started
        click.echo(f"{len(dialogues)} dialogues in {elapsed:.1f} s ({len(dialogues) / elapsed:.2f} dialogues/s)",
                   err=True)


if __name__ == "__main__":
    main()
