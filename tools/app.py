"""The coder's workbench in the browser (``make app``): dialogue in, ranked codes with evidence and confidence,
accept / override / reject, an audit trail. Everything stays on this machine.

    python tools/app.py                                   # make demo's served approach, http://127.0.0.1:7860
    python tools/app.py --adapter outputs/adapters/qlora --base-model HuggingFaceTB/SmolLM2-1.7B-Instruct

The page calls the same predictor as ``tools/predict.py`` (``icd10_coder.predictor``): by default
``make demo``'s served approach (``<demo workspace>/serving.json``): the retrieval shortlist, choice
by likelihood and fusion, scored by ``icd10_coder.choice.score_shortlist`` exactly as it was
evaluated, with the probability calibrated on dev. Confidence bands show the accuracy measured for
each band on held-out real test rows; below the lowest band the page says "not sure — search the
codes". An adapter without a scoring record falls back to constrained beam search: its beam shares are not
calibrated, so the page shows no confidence and no band for them. Evidence
sentences come from ``icd10_coder.evidence``; code search from ``icd10_coder.codes.search``.
Decisions append to ``<workspace>/audit/decisions.jsonl`` (owner-only; no dialogue text, only
its hash). Batch results land in ``<workspace>/app/`` (owner-only). The server binds to
127.0.0.1; other interfaces need --listen-all, which warns. Gradio analytics and share links
are off (tools/offline.env) and the page loads no web fonts.
"""

from __future__ import annotations

import csv
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import click

from icd10_coder import audit, calibration, serving
from icd10_coder.codes import chapter_title, description, search, validity
from icd10_coder.dialogue_input import PredictionError, check_length, parse_dialogues
from icd10_coder.evidence import evidence, highlighted
from icd10_coder.loading import load_suggester, served_model_options
from icd10_coder.offline import apply_offline_env
from icd10_coder.paths import REPO_ROOT, display_path, private_folder
from icd10_coder.predictor import Suggester
from icd10_coder.workspace import Workspace

TOP_K = 5
BENCH_FILE = REPO_ROOT / "outputs" / "bench" / "bench.json"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a batch file; a single dialogue is limited by characters


class Workbench:
    """The page's actions, callable without a browser (the tests call them directly too)."""

    def __init__(self, suggester: Suggester, workspace: Workspace, bands: dict[str, Any] | None, top_k: int = TOP_K):
        """``bands``: {split title: {band: {"n", "accuracy"}}} as :func:`measured_bands` reads them from make bench."""
        self.suggester = suggester
        self.workspace = workspace
        self.bands = bands or {}
        self.top_k = top_k
        self.adapter_sha256 = audit.adapter_hash(suggester.adapter)

    # ------------------------------------------------------------------ reading input
    @staticmethod
    def read_upload(path: str | None) -> bytes | None:
        if not path:
            return None
        file = Path(path)
        if file.stat().st_size > MAX_UPLOAD_BYTES:
            raise PredictionError(f"{file.name}: {file.stat().st_size:,} bytes is too large "
                                  f"({MAX_UPLOAD_BYTES:,} at most)")
        return file.read_bytes()

    def dialogue_from(self, text: str | None, upload: str | None) -> str:
        raw = self.read_upload(upload)
        if raw is not None:
            dialogues, batch = parse_dialogues(raw, Path(upload).name)
            if batch:
                raise PredictionError(f"{Path(upload).name} holds {len(dialogues)} JSONL dialogue(s): use the "
                                      "Batch tab for JSONL files")
            return dialogues[0]
        if not text or not text.strip():
            raise PredictionError("the dialogue is empty: paste a doctor-patient dialogue or upload a .txt file")
        return check_length(text)

    # ------------------------------------------------------------------ suggestions
    def suggest(self, text: str | None, upload: str | None) -> tuple[str, str, list, list[str], dict[str, Any]]:
        """-> (status, suggestions table HTML, evidence spans, codes to decide on, state)."""
        try:
            dialogue = self.dialogue_from(text, upload)
            started = time.perf_counter()
            result = self.suggester.suggest([dialogue], self.top_k)[0]
        except PredictionError as err:
            return f"**Cannot suggest codes:** {err}", "", [], [], {}
        codes = [c["code"] for c in result["codes"]]
        status = (f"{len(codes)} suggestion(s) in {time.perf_counter() - started:.1f} s. Highlighted: sentences "
                  "that share words with each code's description or inclusion terms." if codes else
                  "**No ICD-10-CM code in the model's answer.** Search for a code below.")
        if result.get("not_sure"):
            status = (f"**Not sure — search the codes.** The top suggestion's probability, "
                      f"{result['codes'][0]['confidence']:.2f}, is in the band where suggestions were mostly wrong "
                      f"({self.band_text(result['codes'][0]['confidence'])}); the right code may not be on the "
                      "shortlist at all. Use the search below. " + status)
        if result.get("not_evaluated"):
            status = f"**Not evaluated** ({result['not_evaluated']}): the confidence shown does not apply. " + status
        state = {"dialogue": dialogue, "suggestions": result["codes"]}
        return status, self.table(result["codes"], dialogue), highlighted(dialogue, codes), codes, state

    def band_text(self, confidence: float | None) -> str:
        """The band and, per split make bench measured, how often a top suggestion in it was right."""
        name = calibration.band(confidence)
        measured = [f"{split}: {bands[name]['accuracy']:.0%} right of {bands[name]['n']}"
                    for split, bands in self.bands.items() if (bands.get(name) or {}).get("accuracy") is not None]
        if measured:
            return f"{name} (measured on {'; '.join(measured)})"
        return f"{name} (not measured for this model and band: run make bench)"

    def table(self, codes: list[dict[str, Any]], dialogue: str) -> str:
        rows = []
        for c in codes:
            path = " › ".join(html.escape(p) for p in self.path_names(c["path"]))
            found = evidence(dialogue, c["code"], limit=1)
            words = ", ".join(found[0][1]) if found else "no matching sentence"
            extra = (f"<br><small>over the shortlist: {c['shortlist_probability']:.2f}</small>"
                     if c.get("shortlist_probability") is not None else "")
            if c.get("fused_score") is not None:
                extra = f"<br><small>fused score {c['fused_score']:.2f}</small>"
            if c["confidence"] is None:  # generation: a beam share is not calibrated, so it gets no band
                confidence = "" if c.get("beam_share") is None else f"beam share {c['beam_share']:.2f}<br><small>" \
                    "not calibrated</small>"
            else:
                confidence = f"{c['confidence']:.2f}<br><small>{self.band_text(c['confidence'])}</small>"
            rows.append(
                f"<tr data-code='{c['code']}'><td>{c['rank']}</td><td><b>{c['code']}</b></td>"
                f"<td>{html.escape(c['description'] or '(not in ICD-10-CM)')}</td><td>{c['validity']}</td>"
                f"<td><small>{path}</small></td><td>{confidence}"
                f"{extra}</td><td><small>{html.escape(words)}</small></td></tr>")
        head = ("<tr><th>#</th><th>code</th><th>description</th><th>billable?</th><th>chapter › block › category"
                "</th><th>confidence</th><th>evidence words</th></tr>")
        return f"<table class='suggestions'>{head}{''.join(rows)}</table>"

    @staticmethod
    def path_names(path: list[str | None]) -> list[str]:
        chapter, block, category = (path + [None, None, None])[:3]
        names = []
        if chapter:
            names.append(f"Chapter {chapter}: {chapter_title(chapter)}")
        if block:
            names.append(f"{block}: {chapter_title(block)}")
        if category:
            names.append(f"{category}: {description(category) or ''}")
        return names

    # ------------------------------------------------------------------ decisions
    def decide(self, action: str, code: str | None, state: dict[str, Any]) -> str:
        if not state:
            return "**Nothing to decide on yet:** suggest codes for a dialogue first."
        if action != "reject" and not code:
            return f"**Pick a code to {action}** first."
        entry = audit.record(self.workspace.audit_dir, action=action, code=code if action != "reject" else None,
                             dialogue=state["dialogue"], suggestions=state["suggestions"],
                             base_model=display_path(self.suggester.base_model),
                             adapter=display_path(self.suggester.adapter) if self.suggester.adapter else None,
                             adapter_sha256=self.adapter_sha256,
                             served_by=serving.served_by(self.suggester.record) if self.suggester.record else None)
        what = f"{entry['decision']['code']} ({entry['decision']['description']})" if code and action != "reject" \
            else "all suggestions"
        return (f"Recorded **{action}** of {what} at {entry['time']} in "
                f"`{display_path(self.workspace.audit_dir / audit.AUDIT_FILE)}`.")

    @staticmethod
    def evidence_for(code: str | None, state: dict[str, Any]) -> str:
        """The sentences supporting a code picked from the search, before the coder overrides with it."""
        if not code or not state:
            return ""
        found = evidence(state["dialogue"], code)
        if not found:
            return f"No sentence of the dialogue shares words with {code} ({description(code)})."
        lines = [f"- {html.escape(sentence.text)}  \n  <small>matched: {', '.join(words)}</small>"
                 for sentence, words in found]
        return f"Evidence for **{code}** ({description(code)}):\n" + "\n".join(lines)

    @staticmethod
    def search_codes(query: str) -> list[tuple[str, str]]:
        """(label, code) pairs for a radio list: billable codes first."""
        return [(f"{code} - {description(code)} [{validity(code)}]", code) for code in search(query or "", 15)]

    # ------------------------------------------------------------------ batch
    def batch(self, upload: str | None, progress: Any = None) -> tuple[str, str | None, str | None]:
        """-> (status, JSON file, CSV file) for a JSONL upload."""
        try:
            raw = self.read_upload(upload)
            if raw is None:
                raise PredictionError("upload a JSONL file: one {\"dialogue\": ...} object per line")
            dialogues, is_batch = parse_dialogues(raw, Path(upload).name)
            if not is_batch:
                raise PredictionError(f"{Path(upload).name} is not JSONL: one {{\"dialogue\": ...}} object per line "
                                      "(a single dialogue goes in the Suggest tab)")
        except PredictionError as err:
            return f"**Cannot run the batch:** {err}", None, None
        results = []
        for index, dialogue in enumerate(dialogues):
            if progress is not None:
                progress((index, len(dialogues)), desc="suggesting codes")
            results.append(self.suggester.suggest([dialogue], self.top_k)[0])
        out = private_folder(self.workspace.outputs / "app")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        json_path, csv_path = out / f"batch-{stamp}.json", out / f"batch-{stamp}.csv"
        json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["line", "rank", "code", "description", "validity", "confidence", "band"])
        for line, result in enumerate(results, 1):
            for c in result["codes"]:
                writer.writerow([line, c["rank"], c["code"], c["description"], c["validity"], c["confidence"],
                                 calibration.band(c["confidence"]) if c["confidence"] is not None else ""])
        csv_path.write_text(buffer.getvalue())
        for path in (json_path, csv_path):
            path.chmod(0o600)
        return (f"{len(results)} dialogue(s) coded. Files (owner-only): `{display_path(json_path)}`, "
                f"`{display_path(csv_path)}`."), str(json_path), str(csv_path)


def measured_bands(suggester: Suggester, bench_file: Path = BENCH_FILE) -> tuple[dict[str, Any], str]:
    """Band accuracies measured for what is served, and a line saying where they come from: the served scoring
    record's held-out real test rows (tools/fuse.py), else what ``make bench`` measured for this adapter per split
    ("real dialogues", "demo")."""
    measured = (suggester.record or {}).get("test_calibration") or {}
    if suggester.chooses and measured.get("bands"):
        return ({"real test dialogues": measured["bands"]},
                f"Suggestions: {serving.served_by(suggester.record)} (choice by likelihood among the top "
                f"{suggester.record['shortlist_k']} retrieval candidates, fused with retrieval, weight "
                f"{suggester.record['fusion_weight']}). Confidence measured on {measured['n']} held-out real "
                f"dialogues ({measured.get('split', 'test')}): top-1 right {measured['accuracy']:.0%}, "
                f"ECE {measured['ece']}.")
    if not bench_file.is_file():
        return {}, "Confidence bands are not measured yet: run `make bench`."
    stage = json.loads(bench_file.read_text()).get("app") or {}
    wanted = audit.adapter_hash(suggester.adapter)
    found = {}
    notes = []
    for split, title in (("real", "real dialogues"), ("demo test", "demo test dialogues")):
        measured = stage.get("calibration", {}).get(split) or {}
        if measured.get("adapter_sha256") == wanted and measured.get("bands"):
            found[title] = measured["bands"]
            notes.append(f"{title}: n={measured['n']}, top-1 right {measured['accuracy']:.0%}, ECE {measured['ece']}")
    if not found:
        return {}, "Confidence bands were measured for another model or adapter: run `make bench` again."
    return found, f"Confidence measured by `make bench` ({'; '.join(notes)})."


def build(bench: Workbench, note: str):
    import gradio as gr

    # System fonts: the default theme would fetch web fonts from Google, a request leaving the machine.
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    model = display_path(bench.suggester.base_model) + (
        f" + {display_path(bench.suggester.adapter)}" if bench.suggester.adapter else " (no adapter)")
    with gr.Blocks(title="ICD-10 coder's workbench", analytics_enabled=False) as page:
        gr.Markdown(f"## ICD-10-CM coder's workbench\nModel: `{model}`. {note} Nothing leaves this machine; "
                    f"decisions go to `{display_path(bench.workspace.audit_dir / audit.AUDIT_FILE)}`.")
        state = gr.State({})
        with gr.Tab("Suggest"):
            with gr.Row():
                dialogue = gr.Textbox(label="Doctor-patient dialogue", lines=10, elem_id="dialogue")
                upload = gr.File(label="…or upload a .txt file", file_types=[".txt"], type="filepath",
                                 elem_id="upload")
            suggest = gr.Button("Suggest codes", variant="primary", elem_id="suggest")
            status = gr.Markdown(elem_id="status")
            table = gr.HTML(elem_id="suggestions")
            spans = gr.HighlightedText(label="Evidence in the dialogue (labelled with the codes it supports)",
                                       combine_adjacent=True, show_legend=True, elem_id="evidence")
            gr.Markdown("### Decide")
            with gr.Row():
                choice = gr.Radio(label="Suggested codes", choices=[], elem_id="choice")
                accept = gr.Button("Accept selected suggestion", elem_id="accept")
                reject = gr.Button("Reject all suggestions", variant="stop", elem_id="reject")
            with gr.Row():
                query = gr.Textbox(label="Search ICD-10-CM by code or words (typos are fine)", elem_id="search")
                find = gr.Button("Search", elem_id="find")
            found = gr.Radio(label="Search results (billable codes first)", choices=[], elem_id="search-results")
            found_evidence = gr.Markdown(elem_id="search-evidence")
            override = gr.Button("Use the selected search result instead (override)", elem_id="override")
            decided = gr.Markdown(elem_id="decision-status")
        with gr.Tab("Batch"):
            batch_file = gr.File(label="JSONL: one {\"dialogue\": ...} per line", file_types=[".jsonl"],
                                 type="filepath", elem_id="batch-upload")
            run_batch = gr.Button("Code every dialogue", variant="primary", elem_id="run-batch")
            batch_status = gr.Markdown(elem_id="batch-status")
            with gr.Row():
                batch_json = gr.File(label="Results (JSON)", elem_id="batch-json")
                batch_csv = gr.File(label="Results (CSV)", elem_id="batch-csv")

        def on_suggest(text, file):
            message, rows, evidence_spans, codes, new_state = bench.suggest(text, file)
            return (message, rows, evidence_spans, gr.update(choices=codes, value=codes[0] if codes else None),
                    new_state, "")

        def on_batch(file, progress=gr.Progress()):  # noqa: B008  (how Gradio injects its progress bar)
            return bench.batch(file, progress)

        suggest.click(on_suggest, [dialogue, upload], [status, table, spans, choice, state, decided])
        accept.click(lambda code, s: bench.decide("accept", code, s), [choice, state], decided)
        reject.click(lambda s: bench.decide("reject", None, s), [state], decided)
        override.click(lambda code, s: bench.decide("override", code, s), [found, state], decided)
        found.change(bench.evidence_for, [found, state], found_evidence)
        def on_search(text):
            return gr.update(choices=bench.search_codes(text), value=None)

        find.click(on_search, [query], found)
        query.submit(on_search, [query], found)
        run_batch.click(on_batch, [batch_file], [batch_status, batch_json, batch_csv])
    return page, theme


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@served_model_options
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--top-k", type=click.IntRange(1, 10), default=TOP_K, show_default=True, help="Codes suggested.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--workspace", default=None, metavar="DIR",
              help="Where the audit log (audit/) and batch results (app/) go. Default: $ICD10_WORKSPACE, else the "
                   "checkout (outputs/).")
@click.option("--listen-all", is_flag=True,
              help="Bind to every network interface instead of 127.0.0.1: other machines can then reach the page "
                   "and the dialogues typed into it. Only behind your own access control.")
def main(adapter: str | None, base_model: str | None, serving_file: Path | None, force: bool, port: int, top_k: int,
         device: str,
         workspace: str | None,
         listen_all: bool) -> None:
    """Serve the coder's workbench on http://127.0.0.1:PORT."""
    apply_offline_env(hub_offline=True)
    try:
        space = Workspace.at(workspace)
        suggester = load_suggester(base_model, adapter, device=device, workspace=space,
                                   serving_file=serving_file, force=force)
    except (PredictionError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    bands, note = measured_bands(suggester)
    page, theme = build(Workbench(suggester, space, bands, top_k), note)
    host = "0.0.0.0" if listen_all else "127.0.0.1"
    if listen_all:
        click.secho("WARNING: --listen-all binds to every interface; anyone who can reach this machine on port "
                    f"{port} can use the page and see what is typed into it.", fg="red", err=True)
    click.echo(f"Serving on http://{host}:{port} (Ctrl+C stops)")
    page.queue().launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False,
                        mcp_server=False, footer_links=[], theme=theme, quiet=True)


if __name__ == "__main__":
    main()
