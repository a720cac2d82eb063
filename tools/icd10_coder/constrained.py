"""Constrained decoding: the model may only start its answer with a real billable ICD-10-CM code.

Used through transformers' ``prefix_allowed_tokens_fn`` hook. While the answer is still
inside its first code, a token is allowed only if the text stays a prefix of some billable
code (a character trie over the ~74,000 codes, held as a set of prefixes); once the code
is complete, a separator may follow and the rest of the line (the description) is free.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from icd10_coder.codes import billable_codes

_CODE_CHARS = re.compile(r"^[A-Z0-9.]+$")


class CodePrefixConstraint:
    """Builds a ``prefix_allowed_tokens_fn`` for one prompt length and tokenizer."""

    def __init__(self, tokenizer, codes: tuple[str, ...] | None = None):
        self.tokenizer = tokenizer
        self.codes = frozenset(codes or billable_codes())
        self.prefixes = frozenset(code[:n] for code in self.codes for n in range(1, len(code) + 1))
        vocab_size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab_size)])
        self.all_tokens = list(range(vocab_size))
        # Tokens that can continue a code, and tokens that can end one (" - ...", newline, eos).
        self.code_tokens = [(i, t) for i, t in enumerate(texts) if t and _CODE_CHARS.match(t)]
        self.enders = [i for i, t in enumerate(texts) if t[:1] in (" ", "\n")]
        if tokenizer.eos_token_id is not None:
            self.enders.append(tokenizer.eos_token_id)

    def allowed_after(self, answer: str) -> list[int]:
        """Token ids allowed after the answer text generated so far."""
        if answer and not _CODE_CHARS.match(answer):
            return self.all_tokens  # past the first code: the description is free text
        allowed = [i for i, text in self.code_tokens if answer + text in self.prefixes]
        if answer in self.codes:
            allowed += self.enders
        return allowed or self.all_tokens

    def hook(self, prompt_length: int) -> Callable[[int, torch.Tensor], list[int]]:
        def allowed(_batch_id: int, input_ids: torch.Tensor) -> list[int]:
            answer = self.tokenizer.decode(input_ids[prompt_length:], skip_special_tokens=True)
            return self.allowed_after(answer)

        return allowed
