"""``lm_eval`` with the project's own model types registered (``icd10-retrieval``, ``icd10-hf-choice``).

    python -m icd10_coder.lm_eval_cli run --config recipes/eval/retrieval.yml

Exactly lm-eval's command line (same arguments, same outputs); it only imports the
project's model registrations first, which the plain ``lm_eval`` command cannot know.
tools/run_eval.py runs every config through it.
"""

from __future__ import annotations

from lm_eval.__main__ import cli_evaluate

import icd10_coder.lm_eval_choice  # noqa: F401  (registers "icd10-hf-choice")
import icd10_coder.lm_eval_retrieval  # noqa: F401  (registers "icd10-retrieval")

if __name__ == "__main__":
    cli_evaluate()
