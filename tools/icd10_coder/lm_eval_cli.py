"""``lm_eval`` with the project's own model types registered (``icd10-retrieval``, ``icd10-hf-choice``).

    python -m icd10_coder.lm_eval_cli run --config recipes/eval/retrieval.yml

Exactly lm-eval's command line (same arguments, same outputs) with two differences: it
imports the project's model registrations first, which the plain ``lm_eval`` command cannot
know, and it indexes only the tasks under ``--include_path`` (the project's): indexing the
13,000-odd task files bundled with lm-eval costs ~4.4 s per run on 2 cores and no project
run uses them (the plain ``lm_eval`` command still sees them all). tools/run_eval.py runs
every config through it.
"""

from __future__ import annotations

from typing import Any

from lm_eval.__main__ import cli_evaluate
from lm_eval.tasks import TaskManager

import icd10_coder.lm_eval_choice  # noqa: F401  (registers "icd10-hf-choice")
import icd10_coder.lm_eval_retrieval  # noqa: F401  (registers "icd10-retrieval")


def index_project_tasks_only() -> None:
    """Make TaskManager skip lm-eval's bundled tasks unless a caller asks for them."""
    original = TaskManager.__init__

    def init(self: TaskManager, *args: Any, include_defaults: bool = False, **kwargs: Any) -> None:
        original(self, *args, include_defaults=include_defaults, **kwargs)

    TaskManager.__init__ = init


if __name__ == "__main__":
    index_project_tasks_only()
    cli_evaluate()
