"""Run one lm-eval config with the project's model types and a TaskManager of the project's tasks only.

    python -m icd10_coder.lm_eval_cli run --config recipes/eval/retrieval.yml

The same config file, results and per-sample logs as ``lm_eval run --config FILE --include_path tasks``,
with two differences: the project's model registrations (``icd10-retrieval``, ``icd10-hf-choice``) are
imported first, which the plain ``lm_eval`` command cannot know, and lm-eval is handed a
``TaskManager`` that indexes only ``include_path`` (``include_defaults=False``): indexing the
13,000-odd task files bundled with lm-eval costs ~4.4 s per run on 2 cores and no project run uses
them. Paths in the config stay as given (tools/run_eval.py passes them relative to the checkout and
runs from there), so no result carries the machine's location. tools/run_eval.py runs every config
through it; the plain ``lm_eval`` command still works with ``--include_path tasks``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import icd10_coder.lm_eval_choice  # noqa: F401  (registers "icd10-hf-choice")
import icd10_coder.lm_eval_retrieval  # noqa: F401  (registers "icd10-retrieval")


def evaluate(config_file: Path) -> dict:
    """Evaluate the config and save what ``lm_eval run`` saves (aggregated results, per-task sample logs)."""
    from lm_eval import simple_evaluate
    from lm_eval.config.evaluate_config import EvaluatorConfig
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    cfg = EvaluatorConfig.from_config(config_file)
    task_manager = TaskManager(include_path=cfg.include_path, include_defaults=False, metadata=cfg.metadata or {})
    unknown = [task for task in cfg.tasks if not task_manager.match_tasks(task)]
    if unknown:
        raise SystemExit(f"{config_file}: unknown task(s) {', '.join(unknown)} under include_path {cfg.include_path}")
    tracker = EvaluationTracker(output_path=cfg.output_path)
    results = simple_evaluate(
        model=cfg.model, model_args=cfg.model_args, tasks=cfg.tasks, batch_size=cfg.batch_size, device=cfg.device,
        limit=cfg.limit, log_samples=cfg.log_samples, evaluation_tracker=tracker,
        system_instruction=cfg.system_instruction, apply_chat_template=cfg.apply_chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn, gen_kwargs=cfg.gen_kwargs, task_manager=task_manager,
        random_seed=cfg.seed[0], numpy_random_seed=cfg.seed[1], torch_random_seed=cfg.seed[2],
        fewshot_random_seed=cfg.seed[3], metadata=cfg.metadata)
    samples = results.pop("samples") if cfg.log_samples else None
    json.dumps(results, default=handle_non_serializable)  # fail here, not half-way through saving
    tracker.save_results_aggregated(results=results, samples=samples)
    for task_name in results["configs"] if samples else ():
        tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    print(make_table(results))
    return results


def main(argv: list[str]) -> None:
    if len(argv) != 3 or argv[0] != "run" or argv[1] != "--config":
        raise SystemExit("usage: python -m icd10_coder.lm_eval_cli run --config FILE.yml")
    evaluate(Path(argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
