"""Dialogue in, ranked ICD-10-CM codes out: what a doctor-facing integration calls.

    python tools/predict.py dialogue.txt                 # one dialogue from a file
    cat dialogue.txt | python tools/predict.py -         # from stdin
    python tools/predict.py batch.jsonl --json           # one {"dialogue": ...} per line

Same prompt templates, dialogue clean-up and answer parser as training and evaluation.
With --constrain (default) decoding may only start with a real billable ICD-10-CM code;
beam search gives the ranked alternatives (the first code of each beam). On a GPU
(``--device auto``) the model runs in bf16 (fp16 on T4/V100) and JSONL input is generated
in batches (``--batch-size``); ``--engine vllm`` hands large batches to vLLM.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from icd10_coder.codes import description  # noqa: E402
from icd10_coder.offline import apply_offline_env  # noqa: E402
from icd10_coder.paths import EMBEDDED_MODEL, REPO_ROOT, display_path  # noqa: E402
from icd10_coder.prompts import PROMPT_RECORD  # noqa: E402
from icd10_coder.workspace import DEMO_WORKSPACE, Workspace  # noqa: E402

# What `make demo` trains; a real run's adapter is passed explicitly (outputs/adapters/qlora).
DEFAULT_ADAPTER = Workspace.at(DEMO_WORKSPACE).adapters_dir / "demo-cpu"
MAX_NEW_TOKENS = 48


def pick_device(choice: str) -> str:
    """``auto``: CUDA when a GPU is visible, else the CPU."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return choice


def pick_dtype(device: str):
    """fp32 on the CPU; bf16 on GPUs that have it (Ampere+), else fp16 (T4, V100)."""
    import torch

    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def rank_codes(answers: list[str], top_k: int) -> dict[str, Any]:
    """Answers best first (beams, or one answer with alternatives) -> ranked unique codes with descriptions."""
    from icd10_coder.codes import description, validity
    from icd10_coder.parsing import extract_codes

    ranked: list[str] = []
    for answer in answers:  # keep each answer's codes in order
        for code in extract_codes(answer):
            if code not in ranked:
                ranked.append(code)
    return {
        "codes": [{"rank": rank, "code": code, "description": description(code), "validity": validity(code),
                   "billable": validity(code) == "billable"} for rank, code in enumerate(ranked[:top_k], 1)],
        "raw_answer": answers[0] if answers else "",
    }


def prompt_messages(dialogue: str, candidates: list[str] | None = None) -> list[dict[str, str]]:
    from icd10_coder.dialogue import clean_dialogue
    from icd10_coder.prompts import chat_messages

    cleaned = clean_dialogue(dialogue)
    if not cleaned:
        raise click.ClickException("the dialogue is empty")
    return chat_messages(cleaned, candidates=candidates)


class Shortlister:
    """The retrieval shortlist an adapter was trained with, for the same prompts at prediction time."""

    def __init__(self, k: int, train_jsonl: Path | None, cache_dir: Path):
        from icd10_coder.retrieval import RetrievalSettings, load_or_fit, read_training_pairs

        pairs = read_training_pairs(train_jsonl) if train_jsonl and train_jsonl.is_file() else None
        self.k = k
        self.retriever = load_or_fit(cache_dir, RetrievalSettings(), pairs)

    def __call__(self, dialogues: list[str]) -> list[list[tuple[str, float]]]:
        from icd10_coder.dialogue import clean_dialogue

        return self.retriever.shortlist([clean_dialogue(d) for d in dialogues], self.k)


def prompt_variant(adapter: Path | None, shortlist: bool | None) -> tuple[dict[str, Any], bool]:
    """The adapter's recorded prompt variant, and whether to use the shortlist; a contradiction is an error."""
    record_file = adapter / PROMPT_RECORD if adapter else None
    record = json.loads(record_file.read_text()) if record_file and record_file.is_file() else {}
    trained_with = record.get("prompt_variant")
    if trained_with and shortlist is not None and shortlist != (trained_with == "shortlist"):
        wanted = "with" if shortlist else "without"
        raise click.ClickException(f"adapter {adapter} was trained on {trained_with} prompts ({record_file.name}); "
                                   f"prompting it {wanted} the shortlist would not match its training. Drop "
                                   f"--{'' if shortlist else 'no-'}shortlist.")
    return record, trained_with == "shortlist" if shortlist is None else shortlist


class Predictor:
    """Base model (+ optional LoRA adapter) with the project's prompt and parser, on CPU or GPU."""

    def __init__(self, base_model: Path | str, adapter: Path | None, constrain: bool, device: str = "cpu"):
        import torch  # noqa: F401  (loaded before transformers picks a device)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(adapter or base_model)
        self.tokenizer.padding_side = "left"  # batched generation: every prompt ends where answers start
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=pick_dtype(device))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        self.model = model.to(device).eval()
        self.constraint = None
        if constrain:
            from icd10_coder.constrained import CodePrefixConstraint

            self.constraint = CodePrefixConstraint(self.tokenizer)

    def predict(self, dialogue: str, top_k: int) -> dict[str, Any]:
        return self.predict_batch([dialogue], top_k)[0]

    def predict_batch(self, dialogues: list[str], top_k: int,
                      candidates: list[list[str]] | None = None) -> list[dict[str, Any]]:
        """Beam search over a left-padded batch; the beams of each dialogue give its ranked codes."""
        import torch

        shortlists = candidates or [None] * len(dialogues)
        inputs = self.tokenizer.apply_chat_template([prompt_messages(d, c) for d, c in zip(dialogues, shortlists,
                                                                                            strict=True)],
                                                    add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True, padding=True).to(self.device)
        prompt_length = inputs["input_ids"].shape[1]
        beams = max(1, top_k)
        with torch.no_grad():
            output = self.model.generate(
                **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=beams,
                num_return_sequences=beams, pad_token_id=self.tokenizer.pad_token_id,
                prefix_allowed_tokens_fn=self.constraint.hook(prompt_length) if self.constraint else None)
        answers = [self.tokenizer.decode(seq[prompt_length:], skip_special_tokens=True).strip() for seq in output]
        return [rank_codes(answers[i * beams:(i + 1) * beams], top_k) for i in range(len(dialogues))]


class VllmPredictor:
    """The same prompt and parser through vLLM (GPU, large batches): greedy answers, no constrained decoding."""

    def __init__(self, base_model: Path | str, adapter: Path | None):
        if importlib.util.find_spec("vllm") is None:
            raise click.ClickException("--engine vllm needs vLLM, which has its own environment: on a CUDA machine "
                                       "run `make vllm-env`, then `.venv-vllm/bin/python tools/predict.py "
                                       "--engine vllm ...`")
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        rank = json.loads((adapter / "adapter_config.json").read_text())["r"] if adapter else None
        self.llm = LLM(model=str(base_model), enable_lora=adapter is not None, max_lora_rank=rank or 16,
                       max_model_len=4096, seed=42)
        self.params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
        self.lora = LoRARequest("adapter", 1, str(adapter)) if adapter else None

    def predict_batch(self, dialogues: list[str], top_k: int,
                      candidates: list[list[str]] | None = None) -> list[dict[str, Any]]:
        shortlists = candidates or [None] * len(dialogues)
        outputs = self.llm.chat([prompt_messages(d, c) for d, c in zip(dialogues, shortlists, strict=True)],
                                self.params, lora_request=self.lora, use_tqdm=False)
        return [rank_codes([output.outputs[0].text.strip()], top_k) for output in outputs]


def read_dialogues(source: str) -> tuple[list[str], bool]:
    """Dialogues from a file or stdin ('-'); JSONL (one object with a dialogue per line) is a batch."""
    raw = sys.stdin.buffer.read() if source == "-" else _read_file(Path(source))
    if b"\0" in raw:
        raise click.ClickException(f"{source}: looks like a binary file, expected dialogue text or JSONL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise click.ClickException(f"{source}: not UTF-8 text ({err.reason})") from err
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith("{") for line in lines):
        dialogues = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise click.ClickException(f"{source}: line {number} is not valid JSON ({err.msg})") from err
            value = record.get("dialogue", record.get("Dialogue"))
            if not isinstance(value, str) or not value.strip():
                raise click.ClickException(f"{source}: line {number} has no 'dialogue' text")
            dialogues.append(value)
        return dialogues, True
    if not text.strip():
        raise click.ClickException(f"{source}: the dialogue is empty")
    return [text], False


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise click.ClickException(f"{path}: no such file")
    return path.read_bytes()


def human(result: dict[str, Any]) -> str:
    lines = [f"{c['rank']}. {c['code']:<9} {c['description'] or '(not in ICD-10-CM)'}  [{c['validity']}]"
             for c in result["codes"]] or ["(no ICD-10-CM code in the model's answer)"]
    return "\n".join(lines + [f"model answer: {result['raw_answer']!r}"])


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("source", metavar="FILE|-")
@click.option("--adapter", default=None, metavar="DIR|none",
              help=f"LoRA adapter folder. Default: {display_path(DEFAULT_ADAPTER)} (make demo's) if it exists; "
                   "'none' for the base model alone.")
@click.option("--base-model", default=str(EMBEDDED_MODEL), show_default=True,
              help="Base model: a local folder, or a hub id already in the local cache (the recipe's base_model).")
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
def main(source: str, adapter: str | None, base_model: str, top_k: int, as_json: bool, constrain: bool,
         device: str, batch_size: int | None, engine: str, shortlist: bool | None, shortlist_k: int | None,
         workspace: str | None) -> None:
    """Suggest ranked ICD-10-CM codes for doctor-patient dialogue(s) in FILE (or '-' for stdin)."""
    apply_offline_env(hub_offline=True)
    dialogues, batch = read_dialogues(source)
    if adapter is None:
        adapter_path = DEFAULT_ADAPTER if (DEFAULT_ADAPTER / "adapter_config.json").is_file() else None
    elif adapter.lower() == "none":
        adapter_path = None
    else:
        adapter_path = Path(adapter)
        if not (adapter_path / "adapter_config.json").is_file():
            raise click.ClickException(f"adapter {adapter_path}: not found (no adapter_config.json)")
    looks_local = base_model.startswith((".", "/")) or Path(base_model).exists()
    if looks_local and not (Path(base_model) / "config.json").is_file():
        raise click.ClickException(f"base model {base_model}: not found (no config.json); run `make setup`")
    record, use_shortlist = prompt_variant(adapter_path, shortlist)
    shortlister = None
    if use_shortlist:
        prepared = REPO_ROOT / record["prepared_data"] if record.get("prepared_data") else None
        shortlister = Shortlister(shortlist_k or record.get("shortlist_k") or 10,
                                  prepared / "train.jsonl" if prepared else None,
                                  Workspace.at(workspace).retrieval_cache)
    if engine == "vllm":
        if constrain:
            click.echo("note: --engine vllm decodes without the code constraint (--no-constrain)", err=True)
        predictor: Predictor | VllmPredictor = VllmPredictor(base_model, adapter_path)
        size = batch_size or max(1, len(dialogues))  # vLLM schedules the batch itself
    else:
        chosen = pick_device(device)
        predictor = Predictor(base_model, adapter_path, constrain, chosen)
        size = batch_size or (8 if chosen == "cuda" else 1)
    started = time.perf_counter()
    with tqdm(total=len(dialogues), desc="predict", unit="dialogue", disable=not batch, file=sys.stderr) as bar:
        for first in range(0, len(dialogues), size):
            chunk = dialogues[first:first + size]
            lists = shortlister(chunk) if shortlister else None
            codes = [[code for code, _ in ranked] for ranked in lists] if lists else None
            for index, result in enumerate(predictor.predict_batch(chunk, top_k, codes)):
                if lists:
                    result["shortlist"] = [{"code": code, "description": description(code), "score": score}
                                           for code, score in lists[index]]
                click.echo(json.dumps(result, ensure_ascii=False) if as_json else human(result) + ("\n" if batch
                                                                                                   else ""))
            bar.update(len(chunk))
    if batch:
        elapsed = time.perf_counter() - started
        click.echo(f"{len(dialogues)} dialogues in {elapsed:.1f} s ({len(dialogues) / elapsed:.2f} dialogues/s)",
                   err=True)


if __name__ == "__main__":
    main()
