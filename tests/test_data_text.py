"""jdnn.data.text: the stdlib corpus, its vocabulary and next-character windows."""

import numpy as np
import pytest

from jdnn.data.text import Vocabulary, char_windows, python_corpus


def test_the_corpus_is_python_source_and_reproducible():
    text = python_corpus(5000)
    assert len(text) == 5000 and text == python_corpus(5000)
    assert "def " in text and text.isascii()
    assert python_corpus(1000, skip_chars=4000) == text[4000:]


def test_vocabulary_round_trip_and_errors():
    vocab = Vocabulary.of("hello")
    assert vocab.chars == ("e", "h", "l", "o") and len(vocab) == 4
    np.testing.assert_array_equal(vocab.encode("hole"), [1, 3, 2, 0])
    assert vocab.decode(vocab.encode("hello")) == "hello"
    with pytest.raises(ValueError, match=r"'x' at position 2 is not in the vocabulary"):
        vocab.encode("hex")
    with pytest.raises(ValueError, match=r"id 4 is outside \[0, 4\)"):
        vocab.decode([0, 4])


def test_windows_predict_the_next_character_and_hold_out_the_tail():
    text = python_corpus(3000)
    vocab = Vocabulary.of(text)
    (x, y), (x_test, y_test) = char_windows(text, vocab, 32, stride=16, test_fraction=0.2)
    ids = vocab.encode(text)
    assert x.shape[1] == 32 and x.dtype == np.int32
    np.testing.assert_array_equal(x[1], ids[16:48])
    np.testing.assert_array_equal(y[1], ids[17:49])
    cut = int(len(ids) * 0.8)
    np.testing.assert_array_equal(x_test[0], ids[cut:cut + 32])


def test_windows_need_enough_text():
    vocab = Vocabulary.of("abc")
    with pytest.raises(ValueError, match=r"too few for one window of 64"):
        char_windows("abc" * 10, vocab, 64)
    with pytest.raises(ValueError, match=r"length must be an int >= 1"):
        char_windows("abc" * 10, vocab, 0)
