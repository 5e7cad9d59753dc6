"""Text for character-level language models, from a corpus every machine has: the Python
standard library's own source files. Nothing is downloaded.

    corpus = python_corpus(max_chars=200_000)       the text: stdlib .py files, sorted, joined
    vocab = Vocabulary.of(corpus)                   its characters, each an id
    (x, y), (x_val, y_val) = char_windows(...)      windows of ids, and the next character of each

A language model reads `x[b, t]` and predicts `y[b, t] = x[b, t + 1]`: the targets are the
inputs shifted by one character.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sysconfig

import numpy as np

from jdnn.data.datasets import Split


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The characters of a text, each with an integer id (sorted by code point, ids from 0).

    Attributes:
        chars: the characters, `chars[i]` has id `i`.

    Examples:
        >>> vocab = Vocabulary.of("hello")     # chars ('e', 'h', 'l', 'o')
        >>> vocab.encode("hole")                # array([1, 3, 2, 0], dtype=int32)
        >>> vocab.decode([1, 0])                # 'he'
    """

    chars: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> Vocabulary:
        """The vocabulary of the distinct characters of `text`."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"Vocabulary.of: text must be a non-empty str, got {text!r:.40}")
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def index(self) -> dict[str, int]:
        """Character -> id."""
        return {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text`'s characters, `(len(text),)` int32.

        Raises:
            ValueError: for a character outside the vocabulary, naming it and its position.
        """
        index = self.index
        missing = next(((i, c) for i, c in enumerate(text) if c not in index), None)
        if missing is not None:
            i, c = missing
            raise ValueError(f"Vocabulary.encode: the character {c!r} at position {i} is not in "
                             f"the vocabulary of {len(self)} characters; build the vocabulary "
                             f"from a text that contains it")
        return np.fromiter((index[c] for c in text), np.int32, len(text))

    def decode(self, ids) -> str:
        """The text of a sequence of ids.

        Raises:
            ValueError: for an id outside `[0, len(self))`.
        """
        ids = np.asarray(ids).reshape(-1)
        bad = (ids < 0) | (ids >= len(self))
        if bad.any():
            raise ValueError(f"Vocabulary.decode: id {int(ids[np.argmax(bad)])} is outside "
                             f"[0, {len(self)})")
        return "".join(self.chars[int(i)] for i in ids)


def python_corpus(max_chars: int = 200_000, *, skip_chars: int = 0) -> str:
    """Python source text from the standard library of the running interpreter.

    The stdlib's top-level `.py` files, sorted by name, are joined (each followed by a blank
    line) until `skip_chars + max_chars` characters are collected; the first `skip_chars` are
    dropped. Non-ASCII characters are replaced by `?`, so the vocabulary stays small (~100).
    The same interpreter version gives the same text.

    Args:
        max_chars: how many characters to return, >= 1.
        skip_chars: how many to skip first (e.g. to take held-out text after a training part).

    Returns:
        The text, `max_chars` characters long (shorter only if the stdlib is).

    Examples:
        >>> text = jdnn.data.text.python_corpus(50_000)
    """
    for name, value in (("max_chars", max_chars), ("skip_chars", skip_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "max_chars"):
            raise ValueError(f"python_corpus: {name} must be an int >= {int(name == 'max_chars')},"
                             f" got {value!r}")
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, total, need = [], 0, skip_chars + max_chars
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text.encode("ascii", errors="replace").decode("ascii") + "\n\n")
        total += len(parts[-1])
        if total >= need:
            break
    return "".join(parts)[skip_chars:need]


def char_windows(text: str, vocab: Vocabulary, length: int, *, stride: int | None = None,
                 test_fraction: float = 0.1) -> Split:
    """Windows of `length` character ids and, for each, the next character at every step.

    The text is split once: the first `1 - test_fraction` of it gives the training windows,
    the rest the test windows (so no test character was seen in training). Windows start every
    `stride` characters (default `length`: no overlap).

    Args:
        text: the corpus.
        vocab: its vocabulary (`Vocabulary.of(text)`).
        length: characters per window, >= 1.
        stride: characters between window starts, >= 1 (default `length`).
        test_fraction: the held-out tail of the text, in `(0, 1)`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, each `(N, length)` int32, with
        `y[b, t] = x[b, t + 1]` within the text.

    Raises:
        ValueError: for bad arguments, or a text too short for one window on each side.

    Examples:
        >>> text = python_corpus(100_000); vocab = Vocabulary.of(text)
        >>> (x, y), (x_val, y_val) = char_windows(text, vocab, 64)    # x (N, 64) ids
    """
    stride = length if stride is None else stride
    for name, value in (("length", length), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"char_windows: {name} must be an int >= 1, got {value!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"char_windows: test_fraction must lie in (0, 1), got {test_fraction!r}")
    ids = vocab.encode(text)
    cut = int(len(ids) * (1.0 - float(test_fraction)))

    def windows(part: np.ndarray, where: str):
        starts = np.arange(0, len(part) - length, stride)
        if len(starts) == 0:
            raise ValueError(f"char_windows: the {where} part of the text has {len(part)} "
                             f"characters, too few for one window of {length} plus its next "
                             f"character; use a longer text or a shorter length")
        rows = starts[:, None] + np.arange(length)[None, :]
        return part[rows], part[rows + 1]

    return windows(ids[:cut], "training"), windows(ids[cut:], "test")
