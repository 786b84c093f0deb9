"""Query spelling correction against the catalog's own vocabulary.

A quarter of real Home Depot queries carry a word no title contains: typos ("ceilikng"),
run-together words ("outdoorlounge") or brand misspellings ("milwalke"). The full-text retriever
finds nothing for such a word, so the corrected word is added to the query's lexical side (the
original stays: a wrong correction only adds candidates, which the ranker orders).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from symspellpy import SymSpell, Verbosity

# Shorter words are too often right as typed (model numbers, abbreviations) to correct.
MIN_LENGTH = 4
# One edit for short words, two for longer ones (symspell's usual bound).
SHORT_WORD = 6
# A split part must be this long: "closet maid" is a split, "ma id" is not.
MIN_PART = 3

_WORD = re.compile(r"[a-z]+")


class QueryCorrector:
    def __init__(self, vocabulary: Mapping[str, int]):
        self.vocabulary = dict(vocabulary)
        self._sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
        for word, count in self.vocabulary.items():
            self._sym.create_dictionary_entry(word, max(int(count), 1))

    def _known(self, word: str) -> bool:
        v = self.vocabulary
        return word in v or (word.endswith("s") and word[:-1] in v) or (word.endswith("es") and word[:-2] in v)

    def _fix(self, word: str) -> str | None:
        if len(word) < MIN_LENGTH or self._known(word):
            return None
        close = self._sym.lookup(word, Verbosity.CLOSEST, max_edit_distance=1 if len(word) <= SHORT_WORD else 2)
        if close and close[0].distance == 1:
            return close[0].term
        best: tuple[int, str] | None = None
        for i in range(MIN_PART, len(word) - MIN_PART + 1):
            a, b = word[:i], word[i:]
            if a in self.vocabulary and b in self.vocabulary:
                score = min(self.vocabulary[a], self.vocabulary[b])
                if best is None or score > best[0]:
                    best = (score, f"{a} {b}")
        if best:
            return best[1]
        return close[0].term if close else None

    def corrections(self, query: str) -> dict[str, str]:
        """{word as typed: correction} for the query's unknown words that have one."""
        out = {}
        for word in _WORD.findall(query.lower()):
            if word not in out:
                fixed = self._fix(word)
                if fixed and fixed != word:
                    out[word] = fixed
        return out


def expand(query: str, corrections: Mapping[str, str]) -> str:
    """The query with its corrections appended (the lexical side matches either)."""
    return f"{query} {' '.join(corrections.values())}" if corrections else query
