"""Prompt weighting: the web UIs' syntax (golden examples and properties) and its effect on the
text embeddings and images."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sdrt
from sdrt.runtime.prompts import ROUND, SQUARE, parse_prompt, weigh_embeddings

PLAIN = st.text(alphabet=st.characters(blacklist_characters="()[]\\:", blacklist_categories=("Cs",)), min_size=1)


def close(pairs, expected):
    assert [t for t, _ in pairs] == [t for t, _ in expected]
    assert [w for _, w in pairs] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a ((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.43), (" ", 1.0), ("on", 1 / 1.1), (" a ", 1.0), ("hill", 0.5), (", sun, ", 1.0),
      ("sky", 1.331), (".", 1.0)]),
    (r"\(literal\] \\ (x: 2 )", [("(literal] \\ ", 1.0), ("x", 2.0)]),
    ("[a:1.5] (b:-1)", [("a:1.5", 1 / 1.1), (" ", 1.0), ("b", -1.0)]),
    ("time: 5 (a:.5)", [("time: 5 ", 1.0), ("a", 0.5)]),
    ("", [("", 1.0)]),
])
def test_golden_examples(text, expected):
    close(parse_prompt(text), expected)


@pytest.mark.parametrize("text, literal", [("a (b", "a (b"), ("a ]b) [", "a ]b) [")])
def test_unbalanced_brackets_are_text_with_a_warning(text, literal):
    with pytest.warns(UserWarning, match="Unbalanced brackets"):
        assert parse_prompt(text) == [(literal, 1.0)]


@given(st.text())
def test_never_crashes(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pairs = parse_prompt(text)
    assert pairs and all(isinstance(t, str) and math.isfinite(w) for t, w in pairs)
    assert len(pairs) == 1 or all(t for t, _ in pairs)
    assert all(a[1] != b[1] for a, b in zip(pairs, pairs[1:]))  # neighbours of equal weight merge


@given(PLAIN)
def test_plain_text_round_trips(text):
    assert parse_prompt(text) == [(text, 1.0)]


WRAPPERS = st.lists(st.one_of(st.just("round"), st.just("square"),
                              st.floats(0.05, 3.0, allow_nan=False).map(lambda w: round(w, 3))), max_size=6)


@given(PLAIN, WRAPPERS)
def test_nested_weights_multiply(word, wrappers):
    text, weight = word, 1.0
    for wrapper in wrappers:  # innermost first
        if wrapper == "round":
            text, weight = f"({text})", weight * ROUND
        elif wrapper == "square":
            text, weight = f"[{text}]", weight * SQUARE
        else:
            text, weight = f"({text}:{wrapper})", weight * wrapper
    (fragment, found), = parse_prompt(text)
    assert fragment == word and found == pytest.approx(weight, rel=1e-9)


@given(st.lists(st.tuples(PLAIN, st.sampled_from([1.0, 0.5, 1.5, 2.0])), min_size=1, max_size=5))
def test_fragments_concatenate_to_the_text(segments):
    text = "".join(word if weight == 1.0 else f"({word}:{weight})" for word, weight in segments)
    pairs = parse_prompt(text)
    assert "".join(t for t, _ in pairs) == "".join(word for word, _ in segments)


def test_weights_scale_tokens_and_keep_the_mean():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 5, 4)).astype(np.float32) + 0.3
    weights = np.array([[1, 1.5, 1, 0.5, 1], [1, 1, 1, 1, 1]], np.float32)
    out = weigh_embeddings(hidden, weights)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), hidden.mean(axis=(1, 2)), rtol=1e-5)
    ratio = out[0] / hidden[0]  # each token scaled by weight x one common factor
    np.testing.assert_allclose(ratio / weights[0][:, None], (ratio / weights[0][:, None])[0, 0], rtol=1e-4)
    np.testing.assert_allclose(out[1], hidden[1], rtol=1e-6)


def test_weights_reach_the_unet(tiny_artifact):
    pipe = sdrt.load(tiny_artifact)
    seen = []
    session = pipe.sessions["denoiser"]

    class Recording:
        def run(self, feeds):
            seen.append(feeds["encoder_hidden_states"].copy())
            return session.run(feeds)

    pipe.sessions["denoiser"] = Recording()
    plain = pipe("a red circle", num_inference_steps=1, seed=1, output_type="np").images
    unit = pipe("a (red:1) circle", num_inference_steps=1, seed=1, output_type="np").images
    np.testing.assert_array_equal(unit, plain)  # weight 1 changes nothing, to the bit
    pipe("a (red:1.5) circle", num_inference_steps=1, seed=1, output_type="np")
    ids, weights = pipe.tokenizer.weighted([[("", 1.0)], [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]])
    ids, weights = ids[:, 0], weights[:, 0]  # one chunk each
    assert weights[1].tolist()[:5] == [1.0, 1.0, 1.5, 1.0, 1.0]
    # the layer the pipeline reads (the last, normed); with random weights the states' mean is close to 0, so
    # the mean-restoring scale magnifies rounding: read exactly what the pipeline reads
    encoded = pipe.sessions["text_encoder"].run({"input_ids": ids})["hidden_states"][-1]
    np.testing.assert_allclose(seen[-1][1], weigh_embeddings(encoded[1:], weights[1:])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(seen[-1][0], encoded[0])  # the negative prompt has no weights


def test_long_prompts_go_on_in_chunks(tiny_artifact):
    pipe = sdrt.load(tiny_artifact)
    assert pipe.max_prompt_chunks == 8  # the UNet's text axis takes 8 x 77 tokens
    words = " ".join(["red"] * 80 + ["blue"] * 80)  # 160 tokens: three chunks of 75, 75, 10
    ids, weights = pipe.tokenizer.weighted([[(words, 1.0)], [("", 1.0)]], max_chunks=8)
    assert ids.shape == weights.shape == (2, 3, 77)
    bos, eos, pad = pipe.tokenizer.bos_id, pipe.tokenizer.eos_id, pipe.tokenizer.pad_id
    red, blue = pipe.tokenizer.encode("red blue")
    assert ids[0, 0].tolist() == [bos] + [red] * 75 + [eos]
    assert ids[0, 1].tolist() == [bos] + [red] * 5 + [blue] * 70 + [eos]
    assert ids[0, 2].tolist() == [bos] + [blue] * 10 + [eos] + [pad] * 65
    assert ids[1, 1].tolist() == [bos, eos] + [pad] * 75  # the negative prompt fills with empty chunks
    with pytest.warns(UserWarning, match="the model reads 150, so the last 10 tokens were dropped"):
        assert pipe.tokenizer.weighted([[(words, 1.0)]], max_chunks=2)[0].shape == (1, 2, 77)
