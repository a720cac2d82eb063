"""MedSynth -> axolotl training data + lm-eval evaluation data (``make prepare``).

    python tools/prepare.py                      # hub dataset Ahmad0067/MedSynth
    python tools/prepare.py --source export.csv  # a local CSV / JSONL / Parquet export
    python tools/prepare.py --demo               # offline: the embedded 100 real MedSynth rows

Every step is a function of ``icd10_coder.preparation`` (the data card: ``icd10_coder.datacard``); this
file is the command line. Writes ``train.jsonl / ``val.jsonl`` (chat ``messages`` for axolotl), ``test.jsonl``
(rendered prompts + gold code and hierarchy for lm-eval), and ``data_card.json`` /
``data_card.md`` into ``--out``. All files are written together or not at all.
"""

from __future__ import annotations

from pathlib import Path

import click

from icd10_coder.datacard import data_card_markdown
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import EMBEDDED_MODEL, display_path
from icd10_coder.preparation import CODE_POLICIES, GROUPINGS, HUB_DATASET, prepare
from icd10_coder.records import PrepareError
from icd10_coder.workspace import Workspace


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--source", type=click.Path(dir_okay=False), default=None,
              help=f"Local CSV / JSONL / Parquet export. Default: the hub dataset {HUB_DATASET}.")
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace to prepare (its prepared/ folder; the real run: data/prepared). "
                   "Default: $ICD10_WORKSPACE, else the checkout.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for train/val/test JSONL and the data card. Default: the workspace's prepared data "
                   "(data/prepared).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the split (same seed, same files).")
@click.option("--demo", is_flag=True, help="Use the embedded offline demo data (100 real MedSynth rows, "
              "data/medsynth-demo) instead of the hub dataset.")
@click.option("--templated", is_flag=True, hidden=True,
              help="Tests only: templated synthetic dialogues that state their diagnosis (wiring, not value).")
@click.option("--group-by", type=click.Choice(list(GROUPINGS)), default="dialogue", show_default=True,
              help="; ".join(f"{k}: {v}" for k, v in GROUPINGS.items()))
@click.option("--val-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0, 0.5), default=0.1, show_default=True)
@click.option("--unseen-codes", "unseen_fraction", type=click.FloatRange(0, 0.5), default=0.0, show_default=True,
              help="Share of codes held out whole in test_unseen.jsonl (codes never seen in training).")
@click.option("--code-policy", type=click.Choice(list(CODE_POLICIES)), default="keep", show_default=True,
              help="; ".join(f"{k}: {v}" for k, v in CODE_POLICIES.items()))
@click.option("--deidentify", is_flag=True, help="Replace names, dates, contacts, IDs and addresses with "
              "[TYPE] placeholders (for real patient dialogues; MedSynth is synthetic).")
@click.option("--tokenizer", default=str(EMBEDDED_MODEL), show_default=True,
              help="Tokenizer for the length percentiles in the data card ('none' to skip).")
@click.option("--limit", type=int, default=None, help="Use only the first N rows (quick trials).")
@click.option("--shortlist-neighbours", type=click.IntRange(0, 100), default=10, show_default=True,
              help="Nearest training dialogues whose codes join the shortlist (0: code texts only).")
@click.option("--shortlist", "shortlist_k", type=click.IntRange(1, 50), default=None, metavar="K",
              help="Add the top K retrieval candidates (code + description) to every prompt; written to the "
                   "workspace's prepared-shortlist/ (data/prepared-shortlist) unless --out says otherwise.")
@click.option("--choose", is_flag=True,
              help="With --shortlist: training rows teach choosing (gold always on the list, list shuffled); "
                   "written to prepared-choose/ (data/prepared-choose) for recipes/*-choose.yml.")
@click.option("--shortlist-encoder", default="", metavar="DIR",
              help="With --shortlist: the dense ranking's fine-tuned query encoder (tools/train_encoder.py writes "
                   "it); default: the base all-MiniLM-L6-v2.")
@click.option("--evidence-window", type=click.IntRange(0, 4096), default=0, show_default=True, metavar="TOKENS",
              help="With --shortlist: prompts show the dialogue's evidence window (cue sentences and the sentences "
                   "nearest the shortlist, ~TOKENS tokens, in dialogue order) instead of the whole dialogue; "
                   "0: the whole dialogue.")
def main(source: str | None, workspace: str | None, out: Path | None, seed: int, demo: bool, templated: bool,
         group_by: str, val_fraction: float, test_fraction: float, unseen_fraction: float, code_policy: str,
         deidentify: bool, tokenizer: str, limit: int | None, shortlist_neighbours: int, shortlist_k: int | None,
         choose: bool, shortlist_encoder: str, evidence_window: int) -> None:
    """Turn MedSynth (or a local export, or the embedded --demo rows) into axolotl and lm-eval files."""
    apply_offline_env()
    if sum(map(bool, (demo, templated, source))) > 1:
        raise click.UsageError("--demo, --templated and --source exclude each other")
    try:
        space = Workspace.at(workspace)
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    if choose and not shortlist_k:
        raise click.UsageError("--choose needs --shortlist K (the candidates to choose from)")
    if (shortlist_encoder or evidence_window) and not shortlist_k:
        raise click.UsageError("--shortlist-encoder and --evidence-window need --shortlist K")
    if shortlist_encoder and not (Path(shortlist_encoder) / "config.json").is_file():
        raise click.UsageError(f"--shortlist-encoder {shortlist_encoder}: no encoder there (no config.json); "
                               "tools/train_encoder.py writes one")
    if out is None:
        out = space.prepared_choose if choose else space.prepared_shortlist if shortlist_k else space.prepared
    try:
        card = prepare(source=source, demo=demo, templated=templated, group_by=group_by, out=out,
                       retrieval_cache=space.retrieval_cache, seed=seed, val_fraction=val_fraction,
                       test_fraction=test_fraction, unseen_fraction=unseen_fraction, code_policy=code_policy,
                       deidentify=deidentify, tokenizer=tokenizer, limit=limit,
                       shortlist_neighbours=shortlist_neighbours, shortlist_k=shortlist_k, choose=choose,
                       shortlist_encoder=display_path(Path(shortlist_encoder).resolve()) if shortlist_encoder else "",
                       evidence_window=evidence_window, warn=lambda line: click.secho(line, fg="yellow", err=True))
    except PrepareError as err:
        raise click.ClickException(str(err)) from err
    click.echo(data_card_markdown(card))
    if out.resolve() in (space.prepared.resolve(), space.prepared_shortlist.resolve(),
                         space.prepared_choose.resolve()):
        from icd10_coder.tracking import use_experiment

        use_experiment(space)  # before axolotl can create it with artifacts under ./mlruns
    click.echo(f"Wrote {display_path(out.resolve())}/: " + ", ".join(f"{k} {v}" for k, v in card["splits"].items()))


if __name__ == "__main__":
    main()
