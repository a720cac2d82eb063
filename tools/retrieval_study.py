"""Recall of every retriever variant on the dev rows of the real category folds (``make retrieval-study``).

    python tools/retrieval_study.py              # 805 real rows, 3 category folds, ~10 min on 2 CPU cores

Reads the shared real MedSynth files in place, splits them by category exactly as
``make experiment-real`` does (same folds, same seed) and scores each variant of
``icd10_coder.retrieval_study.VARIANTS`` on the **dev** rows only. Writes the table to
``docs/generated/retrieval-study.md`` (shown in GUIDE.md) and the full figures to
``<workspace>/retrieval-study.json``; the best variant by pooled dev recall@10 is named there and
is what ``RetrievalSettings()`` defaults to (a test keeps the two in step).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click

from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import display_path, private_folder
from icd10_coder.realdata import REAL_FILES, category_folds, load_real_rows


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--folds", type=click.IntRange(2, 10), default=3, show_default=True, help="Category folds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the category folds.")
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs/retrieval-study"),
              show_default=True, help="Where the full figures (JSON) go.")
@click.option("--docs/--no-docs", default=True, show_default=True,
              help="Write the table to docs/generated/ and GUIDE.md (off for trials).")
def main(folds: int, seed: int, workspace: Path, docs: bool) -> None:
    """Score every retriever variant on the dev rows of the real category folds; name the best."""
    apply_offline_env(hub_offline=True)
    from icd10_coder.generated import write_generated
    from icd10_coder.retrieval import RetrievalSettings
    from icd10_coder.retrieval_study import VARIANTS, best_variant, dev_recall, markdown_table

    rows = load_real_rows()
    split = category_folds(rows, folds=folds, seed=seed)
    n_dev = sum(len(f.dev) for f in split)
    click.echo(f"{len(rows)} real rows, {folds} category folds, {n_dev} dev rows (pooled over folds)")

    def show(name: str, result: dict) -> None:
        code = result["pooled"]["code"]
        click.echo(f"  {name:48s} recall@1 {code[1]:.3f} @10 {code[10]:.3f} @50 {code[50]:.3f} "
                   f"({result['seconds_per_dialogue']:.2f} s/dialogue)")

    results = dev_recall(split, progress=show)
    chosen = best_variant(results)
    current = next((name for name, s in VARIANTS.items() if s == RetrievalSettings(neighbours=0)), None)
    private_folder(workspace)
    record = {"rows": len(rows), "files": [display_path(p) for p in REAL_FILES], "folds": folds, "seed": seed,
              "dev_rows": n_dev, "chosen": chosen, "chosen_settings": results[chosen]["settings"],
              "default_now": current, "variants": results, "date": date.today().isoformat()}
    (workspace / "retrieval-study.json").write_text(json.dumps(record, indent=2) + "\n")
    click.secho(f"best on dev (recall@10): {chosen}; RetrievalSettings() is now: {current}", bold=True)
    if docs:
        text = (f"Dev rows of {folds} category folds of the {len(rows)} real rows ({n_dev} dev rows pooled; "
                f"no test row), code texts only (`neighbours=0`); `python tools/retrieval_study.py`, "
                f"{record['date']}. Seconds per dialogue on 2 CPU cores, index built once.\n\n"
                + markdown_table(results, chosen)
                + f"\n\nChosen on dev: **{chosen}** — settings `{json.dumps(results[chosen]['settings'])}`.\n")
        path = write_generated("retrieval-study", text)
        click.echo(f"wrote {display_path(path)}")


if __name__ == "__main__":
    main()
