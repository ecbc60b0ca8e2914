"""Tests of the text loader: tokenizers, vocabulary order, ids, padding, errors, state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metamodal.data.loaders import DecodeContext, TextLoader, loaders, tokenizers
from metamodal.data.loaders.text import char_tokens, word_tokens
from metamodal.errors import ConfigError, DatasetError, UnknownNameError


def context(n: int, problems: list[DatasetError] | None = None) -> DecodeContext:
    return DecodeContext(Path("."), "samples.csv", list(range(1, n + 1)), "caption", problems)


def test_registered_under_kind() -> None:
    assert isinstance(loaders.create("text", max_length=4), TextLoader)


def test_word_tokenizer_lowercases_and_splits_words_and_punctuation() -> None:
    assert word_tokens("Don't PANIC, it's 42!") == ["don't", "panic", ",", "it's", "42", "!"]
    assert word_tokens("Café\u00a0ＡＢＣ  x_y") == ["café", "abc", "x_y"]  # NFKC folds width
    assert word_tokens("   ") == []


def test_char_tokenizer_collapses_space() -> None:
    assert char_tokens("  Ab \t c ") == ["a", "b", " ", "c"]
    assert tokenizers.names() == ["chars", "words"]


def test_vocabulary_sorted_by_count_then_word() -> None:
    loader = TextLoader()
    loader.fit(["b a c", "c b", "c d", None, "a"], context(5))
    assert loader.vocab_ == ["c", "a", "b", "d"]  # c:3, a:2, b:2 (a < b), d:1
    assert loader.input_info() == {"vocab_size": 6, "max_length": 32}


def test_min_count_and_max_vocab_limit_the_vocabulary() -> None:
    cells = ["x x x y y z", "w w y"]
    rare_dropped = TextLoader(min_count=2)
    rare_dropped.fit(cells, context(2))
    assert rare_dropped.vocab_ == ["x", "y", "w"]
    top_two = TextLoader(max_vocab=2)
    top_two.fit(cells, context(2))
    assert top_two.vocab_ == ["x", "y"]


def test_decode_ids_padding_lengths_and_truncation() -> None:
    loader = TextLoader(max_length=3)
    loader.fit(["the bird sings", "the bird"], context(2))  # bird=2, the=3 (tie), sings=4
    batch = loader.decode(["The bird sings loudly", None, "a bird", "   "], context(4))
    assert batch.values.dtype == torch.long
    assert batch.values.tolist() == [[3, 2, 4], [0, 0, 0], [1, 2, 0], [1, 0, 0]]
    assert batch.lengths.tolist() == [3, 0, 2, 1]
    assert batch.present.tolist() == [True, False, True, True]  # empty text: present, unknown


def test_width_is_longest_in_batch_and_at_least_one() -> None:
    loader = TextLoader()
    assert loader.decode(["a b", "c"], context(2)).values.shape == (2, 2)
    empty = loader.decode([None, None], context(2))
    assert empty.values.tolist() == [[0], [0]] and empty.lengths.tolist() == [0, 0]
    assert not empty.present.any()


def test_decode_before_fit_maps_every_token_to_unknown() -> None:
    loader = TextLoader()
    assert not loader.is_fitted
    assert loader.decode(["hello there"], context(1)).values.tolist() == [[1, 1]]


def test_state_dict_round_trip_decodes_identically() -> None:
    loader = TextLoader(max_vocab=3, min_count=1, max_length=5)
    loader.fit(["one two three two", "three three four"], context(2))
    again = TextLoader.from_state(json.loads(json.dumps(loader.state_dict())))
    cells = ["two three four five", None, "one"]
    first, second = loader.decode(cells, context(3)), again.decode(cells, context(3))
    assert again.is_fitted and again.vocab_ == loader.vocab_ == ["three", "two", "four"]
    assert torch.equal(first.values, second.values)
    assert torch.equal(first.lengths, second.lengths)


def test_custom_tokenizer_is_picked_by_name() -> None:
    name = "test-split-on-dash"
    tokenizers.register(name)(lambda text: text.split("-"))
    try:
        loader = TextLoader(tokenizer=name)
        loader.fit(["a-b-a"], context(1))
        assert loader.vocab_ == ["a", "b"]
        assert loader.state_dict()["options"]["tokenizer"] == name
    finally:
        tokenizers._entries.pop(name)


def test_unknown_tokenizer_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="words"):
        TextLoader(tokenizer="bpe-nonexistent")


def test_non_string_cell_is_reported_with_table_row_and_column() -> None:
    with pytest.raises(DatasetError) as info:
        TextLoader().decode(["fine", ["not", "text"]], context(2))
    assert (info.value.file, info.value.row, info.value.column) == ("samples.csv", 2, "caption")
    problems: list[DatasetError] = []
    batch = TextLoader().decode([["x"], "ok"], context(2, problems))
    assert len(problems) == 1 and batch.present.tolist() == [False, True]


@pytest.mark.parametrize("options", [{"max_length": 0}, {"min_count": 0}, {"max_vocab": -1},
                                     {"max_length": 2.5}, {"max_vocab": True}])
def test_invalid_options_raise_config_error(options: dict) -> None:
    with pytest.raises(ConfigError):
        TextLoader(**options)
