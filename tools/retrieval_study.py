"""Recall of every retriever variant on the dev rows of the real category folds (``make retrieval-study``).

    python tools/retrieval_study.py              # 1,565 real rows, 3 category folds, ~20 min on 2 CPU cores

Reads the shared real MedSynth files in place, splits them by category exactly as
``make experiment-real`` does (same folds, same seed) and scores each variant of
``icd10_coder.retrieval_study.VARIANTS`` on the **dev** rows only. Writes the table to
``docs/generated/retrieval-study.md`` (shown in GUIDE.md) and the full figures to
``<workspace>/retrieval-study.json``; the best variant by pooled dev recall@10 is named there and
is what ``RetrievalSettings()`` defaults to (a test keeps the two in step).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import click

from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import EMBEDDED_MODEL, display_path, private_folder
from icd10_coder.realdata import REAL_FILES, category_folds, load_real_rows


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--folds", type=click.IntRange(2, 10), default=3, show_default=True, help="Category folds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the category folds.")
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs/retrieval-study"),
              show_default=True, help="Where the full figures (JSON) go.")
@click.option("--rewrite-rows", type=click.IntRange(min=0), default=60, show_default=True,
              help="Dev rows for the query-rewriting variant (the SLM names the diagnosis, ~2-3 s per dialogue); "
                   "0 skips it.")
@click.option("--cost-rows", type=click.IntRange(min=0), default=5, show_default=True,
              help="Dev dialogues on which the choice step's cost is timed with 10 and with 20 candidates; 0 skips.")
@click.option("--files", "file_names", multiple=True, type=click.Choice([p.name for p in REAL_FILES]),
              help="Only these shared real files (repeat the option). Default: every one.")
@click.option("--dev-rows-only", is_flag=True,
              help="Score nothing: write only the list of the folds' dev rows (docs/generated/"
                   "retrieval-study-dev-rows.json, which reports use to name test rows the defaults were chosen on), "
                   "e.g. for a table made before the list existed.")
@click.option("--docs/--no-docs", default=True, show_default=True,
              help="Write the table and the dev rows' list to docs/generated/ and GUIDE.md (off for trials).")
def main(folds: int, seed: int, workspace: Path, rewrite_rows: int, cost_rows: int, file_names: tuple[str, ...],
         dev_rows_only: bool, docs: bool) -> None:
    """Score every retriever variant on the dev rows of the real category folds; name the best."""
    apply_offline_env(hub_offline=True)
    from icd10_coder.generated import write_generated
    from icd10_coder.realdata import subsample
    from icd10_coder.retrieval import RetrievalSettings
    from icd10_coder.retrieval_study import (
        VARIANTS,
        best_variant,
        choice_cost,
        dev_recall,
        markdown_table,
        rewrite_recall,
    )

    files = tuple(p for p in REAL_FILES if p.name in file_names) if file_names else REAL_FILES
    rows = load_real_rows(files)
    split = category_folds(rows, folds=folds, seed=seed)
    n_dev = sum(len(f.dev) for f in split)
    click.echo(f"{len(rows)} real rows, {folds} category folds, {n_dev} dev rows (pooled over folds)")
    dev_rows = {"files": [p.name for p in files], "rows": len(rows), "folds": folds, "seed": seed,
                "date": date.today().isoformat(), "row_ids": sorted({r.row_id for f in split for r in f.dev})}
    if dev_rows_only:
        write_dev_rows(dev_rows)
        return

    def show(name: str, result: dict) -> None:
        code = result["pooled"]["code"]
        click.echo(f"  {name:48s} recall@1 {code[1]:.3f} @10 {code[10]:.3f} @50 {code[50]:.3f} "
                   f"({result['seconds_per_dialogue']:.2f} s/dialogue)")

    results = dev_recall(split, progress=show)
    chosen = best_variant(results)
    current = next((name for name, s in VARIANTS.items() if s == replace(RetrievalSettings(), neighbours=0)), None)
    unique_dev = list({row.row_id: row for fold in split for row in fold.dev}.values())
    rewrite = None
    if rewrite_rows:
        rewrite = rewrite_recall(subsample(unique_dev, rewrite_rows, seed=f"{seed}-rewrite"),
                                 VARIANTS[chosen], EMBEDDED_MODEL)
        click.echo(f"query rewriting on {rewrite['rows']} dev rows: recall@10 {rewrite['base']['code'][10]:.3f} -> "
                   f"{rewrite['with_phrase']['code'][10]:.3f} ({rewrite['slm_seconds_per_dialogue']:.1f} s/dialogue)")
    cost = choice_cost(subsample(unique_dev, cost_rows, seed=f"{seed}-cost"), VARIANTS[chosen], EMBEDDED_MODEL) \
        if cost_rows else None
    private_folder(workspace)
    record = {"rows": len(rows), "files": [display_path(p) for p in files], "folds": folds, "seed": seed,
              "dev_rows": n_dev, "chosen": chosen, "chosen_settings": results[chosen]["settings"],
              "default_now": current, "variants": results, "query_rewriting": rewrite, "choice_cost": cost,
              "date": date.today().isoformat()}
    (workspace / "retrieval-study.json").write_text(json.dumps(record, indent=2) + "\n")
    click.secho(f"best on dev (recall@10): {chosen}; RetrievalSettings() is now: {current}", bold=True)
    if docs:
        text = (f"Dev rows of {folds} category folds of the {len(rows)} real rows ({n_dev} dev rows pooled; "
                f"each a dev row of its own fold, which another fold may test: the experiment picks its retriever "
                f"per fold on that fold's dev rows alone), code texts only (`neighbours=0`); "
                f"`python tools/retrieval_study.py`, "
                f"{record['date']}. Recall of the gold code (of its 3-character category in brackets); seconds per "
                f"dialogue on 2 CPU cores, each variant encoding its own dialogues, index built once.\n\n"
                + markdown_table(results, chosen)
                + f"\n\nChosen on dev: **{chosen}** — settings `{json.dumps(results[chosen]['settings'])}`.\n"
                + _extras(rewrite, cost, chosen))
        path = write_generated("retrieval-study", text)
        click.echo(f"wrote {display_path(path)}")
        write_dev_rows(dev_rows)  # with the table it belongs to, never before


def write_dev_rows(dev_rows: dict) -> None:
    """The ids of the dev rows the table (and so ``RetrievalSettings()``) was chosen on."""
    from icd10_coder.retrieval import DEFAULTS_CHOSEN_ON

    DEFAULTS_CHOSEN_ON.write_text(json.dumps(dev_rows, indent=1) + "\n")
    click.echo(f"wrote {display_path(DEFAULTS_CHOSEN_ON)} ({len(dev_rows['row_ids'])} dev rows)")


def _extras(rewrite: dict | None, cost: dict | None, chosen: str) -> str:
    """The query-rewriting and K=20 lines under the table."""
    lines = []
    if rewrite:
        base, combined, alone = (rewrite[key]["code"] for key in ("base", "with_phrase", "phrase_alone"))
        lines.append(f"\nQuery rewriting (the embedded SLM names the diagnosis in a few words, "
                     f"`prompts/diagnosis_phrase.j2`; the phrase is ranked by TF-IDF + dense and rank-fused with "
                     f"{chosen}), on {rewrite['rows']} of the dev rows: recall@1/10/50 "
                     f"{base[1]:.3f}/{base[10]:.3f}/{base[50]:.3f} without, {combined[1]:.3f}/{combined[10]:.3f}/"
                     f"{combined[50]:.3f} with; the phrase alone {alone[1]:.3f}/{alone[10]:.3f}/{alone[50]:.3f}; "
                     f"{rewrite['slm_seconds_per_dialogue']:.1f} s per dialogue for the phrase.")
    if cost:
        lines.append(f"\nChoice step with K = 20 instead of 10 (one prompt pass per dialogue, embedded SLM, "
                     f"{cost['rows']} dev dialogues, median): {cost['seconds_k10']:.2f} s -> "
                     f"{cost['seconds_k20']:.2f} s per dialogue; recall@10 -> @20 in the table above.")
    return "\n".join(lines) + ("\n" if lines else "")


if __name__ == "__main__":
    main()
