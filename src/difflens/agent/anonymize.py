"""Hide which organism/dataset is being studied from everything the agent sees.

The agent must infer the finetuning objective from the diffing results and the models; an
organism name (``cake_bake``) or a data file name (``cake_bake.jsonl``) in a tool result would
give the answer away.  :class:`Anonymizer` replaces every given name, in any case and with ``_``,
``-`` or a space between its words, by a neutral placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

PLACEHOLDER = "organism_X"


class Anonymizer:
    """Replace secret names (and file names built from them) with a placeholder."""

    def __init__(self, names: Iterable[str], placeholder: str = PLACEHOLDER) -> None:
        terms: set[str] = set()
        for name in names:
            if not name:
                continue
            stem = Path(str(name)).name
            for suffix in (".card.json", ".jsonl", ".json", ".txt"):
                stem = stem.removesuffix(suffix)
            terms.update({str(name), stem})
        self.placeholder = placeholder
        # Longest first so a path is replaced whole before its stem is.
        patterns = [self._pattern(t) for t in sorted(terms, key=len, reverse=True) if t.strip()]
        self._regex = re.compile("|".join(patterns), re.I) if patterns else None

    @staticmethod
    def _pattern(term: str) -> str:
        words = [re.escape(w) for w in re.split(r"[_\-\s]+", term.strip()) if w]
        return r"[_\-\s]?".join(words)

    def __call__(self, text: str) -> str:
        if self._regex is None or not text:
            return text
        return self._regex.sub(self.placeholder, text)

    def leaks(self, text: str) -> bool:
        """Whether ``text`` still contains a secret name."""
        return bool(self._regex and self._regex.search(text))
