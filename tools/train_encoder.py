"""Fine-tune the dense retriever's query encoder from a YAML recipe, inside a workspace.

    python tools/train_encoder.py recipes/encoder-cpu.yml                            # the real run
    python tools/train_encoder.py recipes/encoder-cpu.yml --workspace outputs/demo   # a workspace
    python tools/train_encoder.py recipes/encoder-cpu.yml --set num_train_epochs=2   # a recipe key changed

Reads prepare's rows (``dialogue``, ``gold_code``) from the recipe's ``train_data`` and writes a
sentence-transformers folder to its ``output_dir`` (both mapped into the workspace, as tools/train.py
maps axolotl recipes), with ``encoder_training.json``: the recipe, the rows, dev recall before and after,
and the time. Then ``tools/prepare.py --shortlist K --shortlist-encoder DIR`` builds shortlists with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import yaml

from icd10_coder.encoder_training import EncoderRecipe, train_encoder
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import REPO_ROOT, display_path, make_private
from icd10_coder.workspace import Workspace


def _value(text: str) -> object:
    return yaml.safe_load(text)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("recipe", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--workspace", default=None, metavar="DIR",
              help="Workspace to read prepared data from and write the encoder to. Default: $ICD10_WORKSPACE, "
                   "else the checkout (the real run).")
@click.option("--set", "changes", multiple=True, metavar="KEY=VALUE",
              help="Change one recipe key for this run (repeat), e.g. --set num_train_epochs=2.")
def main(recipe: Path, workspace: str | None, changes: tuple[str, ...]) -> None:
    """Fine-tune the query side of the retriever's sentence encoder on training dialogues (RECIPE: YAML)."""
    apply_offline_env(hub_offline=True)
    try:
        space = Workspace.at(workspace)
        values = yaml.safe_load(recipe.read_text()) or {}
        for change in changes:
            key, sep, text = change.partition("=")
            if not sep:
                raise ValueError(f"--set {change}: expected KEY=VALUE")
            values[key] = _value(text)
        config = EncoderRecipe.from_dict(values)
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise click.ClickException(f"{recipe}: {err}") from err
    def in_checkout(path: str) -> Path:  # a recipe path in this workspace, on this machine
        mapped = space.map(path)
        return mapped if mapped.is_absolute() else REPO_ROOT / mapped

    train, out, base = (in_checkout(p) for p in (config.train_data, config.output_dir, config.base_encoder))
    dev = in_checkout(config.dev_data) if config.dev_data else None
    if not train.is_file():
        raise click.ClickException(f"{display_path(train)}: prepared data missing; run tools/prepare.py first")
    if not (base / "config.json").is_file():
        raise click.ClickException(f"{display_path(base)}: the base encoder is missing; run `make setup`")
    os.umask(0o077)  # the trainer's scratch files hold dialogue sentences
    click.echo(f"[train_encoder] workspace: {space.name}; {display_path(train)} -> {display_path(out)}")
    try:
        record = train_encoder(config, train, dev, out, base)
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    make_private(out)
    before, after = record["dev_recall_before"], record["dev_recall_after"]
    if before and after:
        click.echo("[train_encoder] dev recall (dense alone, all codes): "
                   + ", ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in before))
    click.echo(f"[train_encoder] {record['train_rows']} rows in {record['train_seconds']:.0f} s -> "
               f"{display_path(out)} (dev rows: {record['dev_rows']})")


if __name__ == "__main__":
    main()
