"""Token ids to text for one generated sequence: stop strings, and streaming without broken pieces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string (excluded, as OpenAI does), and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def held_back(text: str, stop: Sequence[str]) -> int:
    """How many trailing characters could still become a stop string (not safe to stream yet)."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class IncrementalText:
    """Streams the text of a growing token sequence: emits only text that can no longer change.

    Decoding the whole sequence each step (outputs are short) keeps multi-token characters and
    tokenizer-specific spacing right; a trailing U+FFFD (half a UTF-8 character) and anything that
    could be the start of a stop string are held back until the next token decides them.
    """

    def __init__(self, decoder: Decoder, stop: Sequence[str] = ()):
        self.decoder = decoder
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0
        self.stopped = False

    def text(self) -> str:
        return self.decoder.decode(self.ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add a token; return the newly safe text ('' when nothing is safe yet)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self.text()
        cut, found = cut_at_stop(text, self.stop)
        if found:
            self.stopped = True
            return self._emit(cut)
        safe_end = len(text) - held_back(text, self.stop)
        while safe_end > 0 and text[safe_end - 1] == "\ufffd":
            safe_end -= 1
        return self._emit(text[:safe_end])

    def finish(self, final_text: str) -> str:
        """The rest of `final_text` not streamed yet."""
        return self._emit(final_text)

    def _emit(self, text: str) -> str:
        if len(text) <= self.emitted:
            return ""
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece
