"""PII redaction before text reaches annotators.

The same replacement is applied to the prompt and to every answer, so an answer that
quotes the user's e-mail still lines up with the prompt.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from pydantic import BaseModel, Field

BUILTIN_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    # 13-19 digits, optionally grouped by spaces or dashes (payment cards)
    "card": r"\b(?:\d[ -]?){12,18}\d\b",
    # international or local phone numbers with at least 9 digits
    "phone": r"(?<![\w])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])",
}


class RedactionSettings(BaseModel):
    enabled: bool = False
    kinds: list[str] = Field(default_factory=lambda: ["email", "card", "phone"])
    extra_patterns: dict[str, str] = Field(default_factory=dict, description="name -> regex")


@dataclass
class Redactor:
    patterns: list[tuple[str, re.Pattern[str]]]

    @classmethod
    def from_settings(cls, settings: RedactionSettings) -> "Redactor":
        wanted = {k: BUILTIN_PATTERNS[k] for k in settings.kinds if k in BUILTIN_PATTERNS}
        unknown = set(settings.kinds) - set(BUILTIN_PATTERNS)
        if unknown:
            raise ValueError(f"unknown redaction kinds {sorted(unknown)}; known: {sorted(BUILTIN_PATTERNS)}")
        wanted.update(settings.extra_patterns)
        # card before phone: a card number would otherwise be half-eaten as a phone
        return cls([(name, re.compile(regex)) for name, regex in wanted.items()])

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        found: Counter[str] = Counter()
        for name, pattern in self.patterns:
            text, n = pattern.subn(f"[{name.upper()}]", text)
            if n:
                found[name] += n
        return text, found
