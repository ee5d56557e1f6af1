"""course_utils.text: the generated review corpus, the tokenizer, the vocabulary and the encoder."""
import pytest
import torch

from course_utils.text import (NEGATIVE_WORDS, PAD, POSITIVE_WORDS, UNK, build_vocab, encode,
                               movie_reviews, tokenize)


def test_same_arguments_give_the_same_corpus_and_seeds_differ():
    assert movie_reviews(50, seed=3) == movie_reviews(50, seed=3)
    assert movie_reviews(50, seed=3) != movie_reviews(50, seed=4)


def test_the_label_is_the_majority_sentiment_of_each_review():
    texts, labels = movie_reviews(500, seed=1)
    assert len(texts) == len(labels) == 500 and set(labels) == {0, 1}
    assert 0.4 < sum(labels) / 500 < 0.6
    for text, label in zip(texts, labels):
        toks = tokenize(text)
        pos, neg = sum(t in POSITIVE_WORDS for t in toks), sum(t in NEGATIVE_WORDS for t in toks)
        assert (pos > neg) if label else (neg > pos), text


def test_mixed_controls_the_share_of_reviews_with_an_opposite_word():
    def n_mixed(mixed):
        texts, labels = movie_reviews(400, seed=0, mixed=mixed)
        other = lambda l: NEGATIVE_WORDS if l else POSITIVE_WORDS  # noqa: E731
        return sum(any(t in other(l) for t in tokenize(x)) for x, l in zip(texts, labels))
    assert n_mixed(0.0) == 0
    assert n_mixed(1.0) > n_mixed(0.3) > 0


@pytest.mark.parametrize("bad", [dict(n=0), dict(n=2.5), dict(n=True), dict(mixed=1.5), dict(mixed=-0.1)])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        movie_reviews(**bad)


def test_tokenize_lowercases_splits_punctuation_and_drops_html_breaks():
    assert tokenize("Great film!<br />It's GOOD.") == ["great", "film", "!", "it's", "good", "."]
    with pytest.raises(TypeError):
        tokenize(["not", "a", "string"])


def test_vocab_starts_with_pad_and_unk_then_frequency_order():
    vocab = build_vocab(["b a a", "c a b"])
    assert vocab == ["<pad>", "<unk>", "a", "b", "c"]
    assert build_vocab(["b a a", "c a b"], min_freq=2) == ["<pad>", "<unk>", "a", "b"]
    assert build_vocab(["b a a", "c a b"], max_size=1) == ["<pad>", "<unk>", "a"]
    with pytest.raises(ValueError):
        build_vocab(["a"], min_freq=0)


def test_encode_pads_truncates_and_marks_unknown_words():
    vocab = build_vocab(["good film", "bad film"])
    ids = encode(["good film", "bad", "awful film"], vocab)
    assert ids.dtype == torch.long and tuple(ids.shape) == (3, 2)
    assert [vocab[i] for i in ids[0].tolist()] == ["good", "film"]
    assert ids[1].tolist() == [vocab.index("bad"), PAD] and ids[2, 0] == UNK
    assert tuple(encode(["good film good"], vocab, max_len=2).shape) == (1, 2)
    with pytest.raises(TypeError):
        encode("good film", vocab)
    with pytest.raises(ValueError):
        encode(["good"], ["good", "film"])


def test_word_highlights_colours_each_word_by_its_score():
    from course_utils.text import word_highlights
    html = word_highlights(["good", "<b>", "bad"], torch.tensor([2.0, 0.0, -1.0]))
    spans = html.split("</span>")[:-1]
    assert len(spans) == 3
    assert "rgba(0,160,0,1.00)" in spans[0] and spans[0].endswith("good")
    assert "&lt;b&gt;" in spans[1] and ",0.00)" in spans[1]           # escaped, no colour
    assert "rgba(200,0,0,0.50)" in spans[2]
    with pytest.raises(ValueError, match="one score per word"):
        word_highlights(["a", "b"], [1.0])
    with pytest.raises(TypeError, match="list of tokens"):
        word_highlights("a b", [1.0, 2.0])
