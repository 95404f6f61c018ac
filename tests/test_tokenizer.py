"""sdrt's CLIP tokenizer (no transformers at run time) against transformers' CLIPTokenizer."""
import warnings

import numpy as np
import pytest

from sdrt.models.clip_vocab import write_clip_tokenizer
from sdrt.runtime.tokenizer import ClipTokenizer

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "a castle on a hill",
    "A Photo of an ASTRONAUT riding a horse, 4k, trending on artstation!!",
    "  multiple   spaces\tand\nnewlines  ",
    "don't stop: it's 12:30 o'clock -- we'll see",
    "emoji 🚀 and accents: café, naïve, Zürich",
    "html &amp; entities &lt;3",
    "snake_case_words and CamelCase and 3.14159",
    "",
    "日本語のテキスト",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    write_clip_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def ours(folder):
    return ClipTokenizer.from_folder(folder, bos_id=49406, eos_id=49407, pad_id=49407, max_length=77)


@pytest.fixture(scope="module")
def theirs(folder):
    return transformers.CLIPTokenizer.from_pretrained(folder)


def test_vocabulary_is_the_real_clip_one(theirs):
    assert len(theirs) == 49408
    assert theirs.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_transformers(ours, theirs, prompt):
    expected = theirs(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    np.testing.assert_array_equal(ours([prompt])[0], expected)


def test_long_prompt_is_truncated_with_a_warning_that_counts(ours, theirs):
    prompt = " ".join(["red"] * 100)
    with pytest.warns(UserWarning, match="the last 25 tokens were dropped"):
        ids = ours([prompt])
    expected = theirs(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    np.testing.assert_array_equal(ids[0], expected)


def test_short_prompt_gives_no_warning(ours):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ours(["a dog", "a cat"]).shape == (2, 77)
