"""The comparison report's parts: loading each approach's results, intervals, paired tests, tables, plots.

``tools/report.py`` is the command line; this module reads lm-eval's results and per-sample logs (and the
``approach.json`` beside them) and turns them into the summary, the markdown and the plots.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import yaml

from icd10_coder import calibration
from icd10_coder.approach import FAMILIES, RECORD
from icd10_coder.approach import label as approach_label
from icd10_coder.approach import read as read_approach
from icd10_coder.choice import predicted_codes
from icd10_coder.codes import chapter_title
from icd10_coder.jsonl import read_jsonl
from icd10_coder.paths import display_path, newest
from icd10_coder.scoring import LOWER_IS_BETTER, METRICS
from icd10_coder.stats import mcnemar, wilson
from icd10_coder.tracking import use_experiment
from icd10_coder.workspace import Workspace

APPROACHES = tuple(FAMILIES)  # the four compared approaches, each named missing when it has no results
# Paired tests for the headline metrics only: every pair of up to 7 approaches times 7
# metrics would be ~150 tests, and the Holm correction over them would hide everything.
PAIRED_METRICS = ("exact_match", "category_match")
# Paired tests of every approach against every other while there are at most this many;
# beyond, each approach against Retrieval only (the floor), so Holm's correction stays meaningful.
ALL_PAIRS_UP_TO = 5
REFERENCE = "retrieval"


def label(name: str) -> str:
    """Display name of an approach known only by its folder name: one of the four families, else the name."""
    return FAMILIES.get(name, name)


TASK = "icd10_medsynth"
UNSEEN_TASK = "icd10_medsynth_unseen"
# The lm-eval tasks whose results fill each table: generation, and choice by likelihood (and
# tools/fuse.py's fused rankings, which keep the choice task's name).
TASK_VARIANTS = {TASK: (TASK, "icd10_medsynth_choice"), UNSEEN_TASK: (UNSEEN_TASK, "icd10_medsynth_choice_unseen")}
TASK_TITLES = {TASK: "Test split (codes seen in training)", UNSEEN_TASK: "Unseen codes (never seen in training)"}
MISSING_NAME = "missing.json"


@dataclass
class Approach:
    name: str
    folder: Path
    task: str = TASK  # the table: test split or unseen codes
    results_task: str = TASK  # the lm-eval task that produced the results (generation or choice variant)
    model: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    record: dict[str, Any] = field(default_factory=dict)  # approach.json beside the results (run_eval, fuse)

    @property
    def label(self) -> str:
        return approach_label(self.record)

    @property
    def n(self) -> int:
        """Test dialogues scored: the sample log's length, else lm-eval's own count."""
        return len(self.samples) or \
            int(self.results.get("n-samples", {}).get(self.results_task, {}).get("effective", 0))

    def per_item(self, metric: str) -> dict[str, int]:
        """Per-sample 0/1 values keyed by test item id."""
        return {item_key(s): int(s[metric]) for s in self.samples}


def item_key(sample: dict[str, Any]) -> str:
    return str(sample["doc"].get("id", sample.get("doc_hash")))


def missing_reason(folder: Path | None) -> str | None:
    """Why an approach has no results: run_eval's ``missing.json``, or nothing evaluated at all."""
    if folder is None or not folder.is_dir():
        return "not evaluated (no results)"
    note = folder / MISSING_NAME
    if note.is_file():
        return json.loads(note.read_text()).get("reason") or "not evaluated"
    return None


def load_approach(folder: Path, task: str = TASK) -> Approach | None:
    """One approach's results on ``task``; None when it has none (or its last attempt was skipped)."""
    if (folder / MISSING_NAME).is_file():
        return None
    results_file = newest(folder, "results_*.json")
    if results_file is None:
        return None
    results = json.loads(results_file.read_text())
    results_task = next((t for t in TASK_VARIANTS[task] if t in results.get("results", {})), None)
    if results_task is None:
        return None
    record = read_approach(folder)
    if record is None:
        raise ValueError(f"{display_path(folder)} has results but no {RECORD} (written by an older version): run "
                         "`tools/run_eval.py` for it again")
    approach = Approach(name=folder.name, folder=folder, task=task, results_task=results_task, record=record)
    approach.results = results
    run_config = folder / "run_config.yml"
    recorded = yaml.safe_load(run_config.read_text()) if run_config.is_file() else {}
    model_args = recorded.get("model_args") or approach.results.get("config", {}).get("model_args") or {}
    if isinstance(model_args, str):
        model_args = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv)
    parts = ("pretrained", "model", "peft", "lora_local_path")
    approach.model = " + ".join(display_path(str(model_args[k])) for k in parts if model_args.get(k)) or \
        str(recorded.get("model") or "")  # no model at all: the model type (icd10-retrieval)
    # Timestamps start with a digit: icd10_medsynth_2026-... but not icd10_medsynth_unseen_2026-...
    samples_file = newest(results_file.parent, f"samples_{results_task}_[0-9]*.jsonl")
    if samples_file is not None:
        approach.samples = read_jsonl(samples_file)
    return approach


def metric_summary(approach: Approach) -> dict[str, dict[str, float]]:
    task_results = approach.results.get("results", {}).get(approach.results_task, {})
    summary = {}
    for metric in METRICS:
        values = list(approach.per_item(metric).values()) if approach.samples else None
        mean = sum(values) / len(values) if values else \
            task_results.get(f"{metric},parsed_codes", task_results.get(f"{metric},none"))
        n = approach.n
        low, high = wilson(round(mean * n), n) if mean is not None and n else (math.nan, math.nan)
        summary[metric] = {"mean": mean, "ci95_low": low, "ci95_high": high,
                           "stderr": task_results.get(f"{metric}_stderr,parsed_codes")}
    return summary


def paired_tests(approaches: list[Approach]) -> list[dict[str, Any]]:
    """Every pair while there are few approaches; with more, each one against Retrieval (the floor)."""
    tests = []
    logged = [x for x in approaches if x.samples]
    pairs = list(combinations(logged, 2))
    if len(logged) > ALL_PAIRS_UP_TO and any(x.name == REFERENCE for x in logged):
        pairs = [(a, b) for a, b in pairs if a.name == REFERENCE]
    for a, b in pairs:
        for metric in PAIRED_METRICS:
            result = mcnemar(a.per_item(metric), b.per_item(metric), lower_is_better=metric in LOWER_IS_BETTER)
            tests.append({"task": a.task, "a": a.name, "b": b.name, "metric": metric, **result})
    return tests


def confusions(approach: Approach, top: int = 10) -> list[tuple[str, str, int]]:
    pairs = Counter()
    for s in approach.samples:
        predicted = next(iter(predicted_codes(s)), "(none)")
        if not s["exact_match"]:
            pairs[(s["doc"]["gold_code"], predicted)] += 1
    return [(gold, pred, n) for (gold, pred), n in pairs.most_common(top)]


def by_chapter(approach: Approach) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for s in approach.samples:
        chapter = s["doc"].get("chapter") or "unknown"
        hit_total = counts.setdefault(chapter, [0, 0])
        hit_total[0] += int(s["exact_match"])
        hit_total[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


# ---------------------------------------------------------------- plots


def plot_metrics(approaches: list[Approach], summaries: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / max(1, len(approaches))
    for i, approach in enumerate(approaches):
        s = summaries[approach.name]
        means = [s[m]["mean"] or 0 for m in METRICS]
        errors = [[max(0, (s[m]["mean"] or 0) - s[m]["ci95_low"]) for m in METRICS],
                  [max(0, s[m]["ci95_high"] - (s[m]["mean"] or 0)) for m in METRICS]]
        xs = [j + (i - (len(approaches) - 1) / 2) * width for j in range(len(METRICS))]
        bars = ax.bar(xs, means, width, yerr=errors, capsize=3, label=f"{approach.label} (n={len(approach.samples)})")
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], fontsize=7, padding=2)
    ax.set_xticks(range(len(METRICS)), [m.replace("_", " ") + (" (lower=better)" if m in LOWER_IS_BETTER else "")
                                        for m in METRICS], rotation=20, ha="right")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("share of test dialogues")
    ax.set_title("ICD-10 coding: metrics per approach (95% Wilson CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=len(approaches), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_chapters(approaches: list[Approach], path: Path) -> None:
    import matplotlib.pyplot as plt

    chapters = sorted({c for a in approaches for c in by_chapter(a)}, key=lambda c: (not c.isdigit(), int(c)
                                                                                      if c.isdigit() else 0, c))
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(chapters) + 1.8))
    height = 0.8 / max(1, len(approaches))
    for i, approach in enumerate(approaches):
        table = by_chapter(approach)
        values = [table[c][0] / table[c][1] if c in table else 0 for c in chapters]
        ys = [j + (i - (len(approaches) - 1) / 2) * height for j in range(len(chapters))]
        bars = ax.barh(ys, values, height, label=approach.label)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(range(len(chapters)), [textwrap.fill(f"{c}: {chapter_title(c)}", 48) if c != "unknown" else c
                                         for c in chapters], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("exact match")
    ax.set_title("Exact match per ICD-10-CM chapter")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusions(approaches: list[Approach], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(approaches), figsize=(5.5 * len(approaches), 4.2), squeeze=False)
    for ax, approach in zip(axes[0], approaches, strict=True):
        rows = confusions(approach)
        ax.barh([f"{g} -> {p}" for g, p, _ in rows], [n for *_, n in rows], color="tab:red")
        ax.invert_yaxis()
        ax.set_title(f"{approach.label}: most frequent errors\n(gold -> first predicted code)", fontsize=10)
        ax.set_xlabel("test dialogues")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="y", labelsize=8)
        if not rows:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no errors", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- report


def without_nan(value: Any) -> Any:
    """JSON has no NaN: undefined intervals become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return value


def fmt(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def approach_rows(approaches_info: dict[str, Any]) -> list[str]:
    lines = ["| approach | model | n | " + " | ".join(METRICS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for name, info in approaches_info.items():
        if info["status"] == "missing":
            dashes = " | ".join("–" for _ in METRICS)
            lines.append(f"| {label(name)} | missing: {info['reason']} | – | {dashes} |")
            continue
        cells = [f"{fmt(m['mean'])} [{fmt(m['ci95_low'])}, {fmt(m['ci95_high'])}]"
                 for m in (info["metrics"][k] for k in METRICS)]
        lines.append(f"| {info.get('label') or label(name)} | `{info['model']}` | {info['n']} | " + " | ".join(cells)
                     + " |")
    return lines


def paired_rows(tests: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    lines = ["| A | B | metric | n | B − A | only A better | only B better | p | p (Holm) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in tests:
        a, b = (labels.get(t[k]) or label(t[k]) for k in ("a", "b"))
        lines.append(f"| {a} | {b} | {t['metric']} | "
                     f"{t['n_paired']} | {t['difference_b_minus_a']:+.3f} | {t['a_better']} | {t['b_better']} | "
                     f"{t['p_value']:.3g} | {t['p_holm']:.3g} |")
    return lines


def measured_calibration(approaches: list[Approach]) -> dict[str, dict[str, Any]]:
    """The test-split calibration tools/fuse.py measured for each fused approach (``fusion.json``)."""
    found = {}
    for approach in approaches:
        fusion = approach.folder / "fusion.json"
        if fusion.is_file() and (measured := json.loads(fusion.read_text()).get("test_calibration")):
            found[approach.name] = measured
    return found


def split_title(card: dict[str, Any]) -> str:
    """The test table's title, from the data card: whether its codes were trained on."""
    seen, codes = card.get("test_codes_seen_in_train"), card.get("test_codes")
    if seen is None or not codes:
        return TASK_TITLES[TASK]
    if seen == 0:
        siblings = (card.get("options") or {}).get("group_by") == "category"
        return "Test split (codes never trained on" + ("; nor any code of their categories)" if siblings else ")")
    return f"Test split ({seen} of {codes} codes seen in training)"


def retriever_defaults_note(chosen_on: dict[str, Any]) -> str:
    """Which test rows the retriever's defaults were chosen on (``retrieval.defaults_chosen_on``)."""
    among, n = chosen_on["among_study_dev_rows"], chosen_on["test_rows"]
    study = (f"The retriever's defaults (`RetrievalSettings()`) were chosen by `make retrieval-study` on "
             f"{chosen_on['study_dev_rows']} dev rows of {', '.join(chosen_on['study_files'])}")
    if not among:
        return f"{study}; none of this test split's {n} rows is among them."
    return (f"{study}; **{len(among)} of this test split's {n} rows are among them** ({', '.join(among)}): on those "
            "rows the shortlist and the Retrieval approach come from a retriever tuned partly on them.")


def markdown(summary: dict[str, Any], approaches: list[Approach], plots: list[str]) -> str:
    sections = [(TASK, summary["approaches"], summary["paired_tests"])]
    if summary.get("unseen"):
        sections.append((UNSEEN_TASK, summary["unseen"]["approaches"], summary["unseen"]["paired_tests"]))
    sections = [s for s in sections if any(info["status"] == "present" for info in s[1].values())]
    shown = [name for _, infos, _ in sections for name in infos]
    labels = {name: info["label"] for _, infos, _ in sections for name, info in infos.items() if info.get("label")}
    lines = [f"# ICD-10 coding: {' vs '.join(labels.get(a) or label(a) for a in dict.fromkeys(shown))}", "",
             f"Generated {summary['generated_at']} in workspace {summary['workspace']}. "
             f"Data card sha256 `{summary['data_card_sha256'] or 'n/a'}`.", ""]
    titles = {**TASK_TITLES, TASK: summary.get("test_title") or TASK_TITLES[TASK]}
    for task, infos, _ in sections:
        lines += [f"## {titles[task]} (`{task}`)", ""] + approach_rows(infos) + [""]
    if chosen_on := summary.get("retriever_defaults"):
        lines += [retriever_defaults_note(chosen_on), ""]
    lines += ["Cells: mean [95% Wilson confidence interval] over test dialogues. parse_failure_rate: lower is "
              "better; every other metric: higher is better. top3_match counts the gold code among the first "
              "three codes of an answer: for a model that answers one code it equals exact_match.", ""]
    n_tests = sum(len(tests) for *_, tests in sections)
    if n_tests:
        lines += ["## Paired differences (exact McNemar test, same test items)", "",
                  f"{n_tests} tests are shown, so a raw p < 0.05 will happen by luck alone now and then. "
                  "**p (Holm)** is corrected over all of them (Holm–Bonferroni, family-wise error 5%): read "
                  "a difference as unlikely to be luck only when p (Holm) < 0.05. \"Only A better\" counts the "
                  "items where A scored better than B (for a lower-is-better metric such as parse_failure_rate: "
                  f"where only B failed). Tests cover {' and '.join(PAIRED_METRICS)}; with more than {ALL_PAIRS_UP_TO} "
                  "approaches, each is tested against Retrieval only.", ""]
        for task, _, tests in sections:
            if tests:
                lines += [f"### {titles[task]}", ""] + paired_rows(tests, labels) + [""]
    if summary.get("calibration"):
        lines += ["## Calibration on the test split", "",
                  "The served score's confidence is the top candidate's probability over the shortlist at the "
                  "temperature fitted on dev (tools/fuse.py); below 0.3 the page says \"not sure — search the "
                  "codes\". ECE: expected calibration error over 10 equal-width bins (0 = confidence equals the "
                  "share right).", ""] + calibration.markdown(summary["calibration"], {a.name: a.label for a in
                                                                                     approaches}) + [""]
    if summary.get("served"):
        served = summary["served"]
        chosen = labels.get(served["approach"]) or label(served["approach"])
        lines += [f"Served by `make app` and `tools/predict.py`: **{chosen}** (best dev exact match, "
                  f"{served['dev_exact_match']:.3f}; dev: "
                  + ", ".join(f"{labels.get(k) or label(k)} {v:.3f}" for k, v in served["compared_on_dev"].items())
                  + ").", ""]
    for approach in approaches:
        rows = confusions(approach, top=5)
        if rows:
            lines += [f"Most frequent errors of {approach.label} ({titles[approach.task].lower()}): "
                      + "; ".join(f"{g} → {p} ({n})" for g, p, n in rows), ""]
    lines += [f"## Plots ({titles[sections[0][0]].lower()})", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def log_to_mlflow(summary: dict[str, Any], approaches: list[Approach], report_dir: Path,
                  workspace: Workspace) -> str:
    """One MLflow run per evaluated approach and test split (params, metrics, report + plots as artifacts)."""
    import mlflow

    use_experiment(workspace)
    for approach in approaches:
        unseen = approach.task == UNSEEN_TASK
        info = (summary["unseen"] if unseen else summary)["approaches"][approach.name]
        with mlflow.start_run(run_name=f"eval-{approach.name}" + ("-unseen" if unseen else "")):
            mlflow.set_tags({"stage": "evaluation", "approach": approach.name, "task": approach.task})
            mlflow.log_params({"model": info["model"][:500], "n": info["n"], "workspace": summary["workspace"],
                               "data_card_sha256": summary["data_card_sha256"] or "n/a"})
            for metric, values in info["metrics"].items():
                if values["mean"] is not None:
                    mlflow.log_metric(metric, values["mean"])
                    if not math.isnan(values["ci95_low"]):
                        mlflow.log_metric(f"{metric}_ci95_low", values["ci95_low"])
                        mlflow.log_metric(f"{metric}_ci95_high", values["ci95_high"])
            mlflow.log_artifacts(str(report_dir), artifact_path="report")
    return display_path(workspace.mlflow_db)


def approaches_info(names: list[str], folders: dict[str, Path], loaded: dict[str, Approach | None],
                    summaries: dict[tuple[str, str], dict]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name in names:
        approach = loaded[name]
        if approach is None:
            # A core approach with no results is named missing, unless a variant of it was evaluated instead
            # (make demo evaluates baseline-slm-choice-shortlist, not baseline-slm).
            variant = any(other.startswith(name + "-") and loaded.get(other) for other in names)
            if name in APPROACHES and not variant:
                info[name] = {"status": "missing", "reason": missing_reason(folders.get(name))}
            continue
        info[name] = {"status": "present", "label": approach.label, "model": approach.model, "n": approach.n,
                      "metrics": summaries[(approach.task, name)]}
    return info
