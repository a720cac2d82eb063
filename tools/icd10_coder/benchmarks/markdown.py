"""bench.json as markdown: the whole run and the stages GUIDE section 9 shows."""

from __future__ import annotations

from typing import Any

from icd10_coder.benchmarks.data import SEQUENCE_LENS


def markdown(bench: dict[str, Any]) -> str:
    hw = bench["hardware"]
    lines = [f"# Benchmarks ({bench['generated_at']})", "",
             f"{hw['cpu']}, {hw['cores']} cores, {hw['ram_gib']} GiB, GPU: {hw['gpu'] or 'none'}; "
             + ", ".join(f"{k} {v}" for k, v in hw["versions"].items()), ""]
    if "prepare" in bench:
        p = bench["prepare"]
        lines += [f"- prepare: {p['rows']} rows in {p['seconds']} s = **{p['rows_per_s']} rows/s**, "
                  f"peak {p['peak_rss_gib']} GiB", ""]
    if "tokens" in bench:
        packing_columns = " | ".join(f"packing {s}" for s in SEQUENCE_LENS)
        lines += [f"| token lengths from | random | length-grouped | {packing_columns} | recipe |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in SEQUENCE_LENS) + " | --- |"]
        for name, r in bench["tokens"]["sources"].items():
            s = r["non_padding_share"]
            lines.append(f"| {name} | {s['random']:.3f} | {s['length_grouped']:.3f} | "
                         + " | ".join(f"{s[f'packing_{n}']:.3f}" for n in SEQUENCE_LENS)
                         + f" | {r['recipe_choice']} {r['recipe_share']:.3f} {'✓' if r['meets_target'] else '✗'} |")
        lines.append("")
    if "training" in bench:
        t = bench["training"]
        lines += [f"- training ({t['settings']}): LoRA fp32 **{t['lora_fp32']['tokens_per_s']} tokens/s** "
                  f"(peak {t['lora_fp32']['peak_rss_gib']} GiB), QLoRA 4-bit **{t['qlora_4bit']['tokens_per_s']} "
                  f"tokens/s** (peak {t['qlora_4bit']['peak_rss_gib']} GiB); QLoRA/LoRA {t['qlora_over_lora_speed']}"]
    if "evaluation" in bench:
        e = bench["evaluation"]
        lines += [f"- evaluation: batch 1 {e['batch_1']['samples_per_s']} samples/s, batch 8 "
                  f"{e['batch_8']['samples_per_s']} samples/s (x{e['batch_8_over_batch_1']}); scoring "
                  f"{e['scoring_us_per_sample']} µs/sample"]
    if "predict" in bench:
        p = bench["predict"]
        for name in ("base", "finetuned"):
            if f"{name}_constrained" in p:
                free, constrained = p[f"{name}_unconstrained"], p[f"{name}_constrained"]
                lines.append(f"- predict, {name} model ({p['dialogues']} demo test dialogues, top-1): valid-code rate "
                             f"{free['valid_code_rate']} unconstrained vs **{constrained['valid_code_rate']} "
                             f"constrained**; exact {free['exact_match']} vs {constrained['exact_match']}; "
                             f"{free['dialogues_per_s']} vs {constrained['dialogues_per_s']} dialogues/s")
    if "retrieval" in bench:
        lines += retrieval_markdown(bench["retrieval"])
    if "approach_cost" in bench and "skipped" not in bench["approach_cost"]:
        c = bench["approach_cost"]
        lines += ["", f"CPU cost per real dialogue ({c['settings']}; {c['dialogues']} dialogues):", "",
                  "| approach | s per dialogue | repeats |", "| --- | --- | --- |"]
        lines += [f"| {name} | {v['s_per_dialogue']} | {v['repeats']} |" for name, v in c.items()
                  if isinstance(v, dict)]
        lines.append(f"\nOne prompt pass makes choice by likelihood {c['choice_speedup']}x faster.")
    if "prompt_cost" in bench:
        lines += [""] + prompt_cost_markdown(bench["prompt_cost"])
    if "app" in bench:
        lines += ["", "Workbench (make app):", ""] + app_markdown(bench["app"])
    return "\n".join(lines) + "\n"


def prompt_cost_markdown(c: dict[str, Any]) -> list[str]:
    """The prompt_cost stage as markdown lines (also docs/generated/bench-prompt_cost.md with --docs)."""
    lines = [f"The SLM's prompt, before (whole dialogue) and after (evidence window) ({c['settings']}; "
             f"{c['dialogues']} dialogues, medians of {c['repeats']} repeats):", "",
             "| prompt | tokens per prompt (median / max) | LoRA s per row | scoring s per row |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {v['tokens_per_prompt_median']} / {v['tokens_per_prompt_max']} | {v['lora_s_per_row']} "
              f"| {v['scoring_s_per_row']} |" for name, v in c.items() if isinstance(v, dict)]
    return lines


PAGE_TARGET_S = 1.5  # a suggestion on the page, 2 CPU cores


def page_summary(a: dict[str, Any], stamp: str) -> str:
    """The README's line on what a suggestion costs on the page (written with bench-app.md)."""
    page = a["page"]
    alone = next((c["s_per_suggestion_median"] for c in a["calibration"].values()
                  if isinstance(c, dict) and c.get("s_per_suggestion_median") is not None), None)
    met = "reached" if page["s_per_suggestion_median"] <= PAGE_TARGET_S else "not reached"
    return (f"A suggestion takes **{page['s_per_suggestion_median']} s on the page** (median of {page['n']} real "
            f"dialogues; the predictor alone {alone} s; target ≤ {PAGE_TARGET_S} s: {met}; {stamp}).\n")


def app_markdown(a: dict[str, Any]) -> list[str]:
    """The app stage as markdown lines (also docs/generated/bench-app.md with --docs): per split, the served
    approach's calibration, band accuracy, reliability bins and seconds per suggestion; evidence; search."""
    lines = []
    for name, cal in a["calibration"].items():
        if isinstance(cal, dict) and "ece" not in cal:  # timed only (the served model trained on these rows)
            lines.append(f"- {name} ({cal['n']} dialogues, served: {cal.get('served')}): "
                         f"{cal.get('s_per_suggestion_median')} s per suggestion (median, the predictor alone)")
        elif isinstance(cal, dict):
            bands = ", ".join(f"{b} {v['accuracy'] if v['accuracy'] is not None else '–'} (n={v['n']})"
                              for b, v in cal["bands"].items())
            lines.append(f"- calibration on {name} ({cal['n']} dialogues, served: {cal.get('served')}, adapter "
                         f"{cal['adapter']}): ECE {cal['ece']}, top-1 accuracy {cal['accuracy']}; accuracy per "
                         f"band: {bands}; {cal.get('s_per_suggestion_median')} s per suggestion (median)")
            lines.append("  reliability (confidence bin: mean confidence → share right): " + "; ".join(
                f"[{b['range'][0]:.1f}, {b['range'][1]:.1f}) {b['mean_confidence']:.2f} → {b['accuracy']:.2f} "
                f"(n={b['n']})" for b in cal["bins"]))
    if a.get("calibration_skipped"):
        lines.append(f"- calibration not measured here: {a['calibration_skipped']}")
    if a.get("page"):
        page = a["page"]
        lines.append(f"- on the page: {page['s_per_suggestion_median']} s per suggestion (median of {page['n']} real "
                     f"dialogues, slowest {page['s_max']} s; {page['how']})")
    for name, ev in a["evidence"].items():
        lines.append(f"- evidence: gold code has a highlighted sentence in {ev['gold_with_evidence']:.0%} of "
                     f"{ev['n']} {name} dialogues")
    lines.append(f"- code search: {a['search_ms_median']} ms per query (median)")
    return lines


def retrieval_markdown(r: dict[str, Any]) -> list[str]:
    """The retrieval stage as markdown lines (also written to docs/generated/bench-retrieval.md with --docs)."""
    lines: list[str] = []
    if "real_dev" in r:
        lines += ["", f"Retriever variants on the dev rows of the real category folds ({r['real_dev']['rows']} "
                  "rows), recall@k of the gold code (category in brackets), CPU seconds per dialogue:", "",
                  "| retriever | @1 | @5 | @10 | @20 | @50 | s / dialogue |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, v in r["real_dev"]["variants"].items():
            code, category = v["recall"]["code"], v["recall"]["category"]
            lines.append(f"| {name} | " + " | ".join(f"{code[k]:.3f} ({category[k]:.3f})" for k in code)
                         + f" | {v['s_per_dialogue']} |")
    sc = r["scale"]
    lines += ["", f"- default retriever: index fit {sc['fit_s_median']} s (code embeddings loaded from the "
              f"cache), shortlist of {sc['dialogues']} dialogues {sc['shortlist_s_median']} s "
              f"({sc['ms_per_dialogue']} ms each; medians of {sc['repeats']}); index {sc['index_mb']} MB + "
              f"code embeddings {sc['code_embeddings_mb']} MB"]
    return lines
