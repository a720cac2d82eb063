"""lm-eval's ``hf`` model with one prompt pass per dialogue for the choice task (``model: icd10-hf-choice``).

The choice task asks for the log-likelihood of ten answer lines after the same ~1,400-token
prompt. lm-eval's ``hf`` model runs prompt + answer ten times; this subclass runs the prompt
once (from the cached system prompt on, as predict does), keeps its key/value cache, and scores all
answers in one packed pass over it (measured: ``make bench``, stage ``approach_cost``).
The numbers are the same log-likelihoods up to float rounding (a test compares both on real
prompts); everything else is lm-eval's ``hf`` model, with the same
``model_args`` (``pretrained``, ``peft``, ``dtype``, ...).
"""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property

import lm_eval.models  # noqa: F401  (lm-eval's own models first: its registry loads them only while empty)
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from icd10_coder.choice import PromptOpenings, continuation_loglikelihoods
from icd10_coder.prompts import prompt_openings


@register_model("icd10-hf-choice")
class PrefixCachedHFLM(HFLM):
    """HFLM whose loglikelihood shares one forward pass of each distinct context."""

    @cached_property
    def openings(self) -> PromptOpenings:
        """The prompt openings' caches, as predict keeps them: both score the same passes."""
        return PromptOpenings.compute(self.model, prompt_openings(self.tokenizer), self.device)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        by_context: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (_, context, _) in enumerate(requests):
            by_context[tuple(context)].append(index)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for context, indices in tqdm(by_context.items(), desc="choice (one prompt pass each)", unit="prompt",
                                     disable=disable_tqdm or self.rank != 0):
            continuations = [requests[i][2] for i in indices]
            scored = continuation_loglikelihoods(self.model, list(context), continuations, self.device,
                                                 self.openings)
            for index, answer in zip(indices, scored, strict=True):
                results[index] = answer
                self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
        return results  # type: ignore[return-value]
