"""A tiny offline text corpus for the NLP lesson: generated movie reviews whose sentiment words are known.

Each review is built from templates: one or two clauses carrying words of its own sentiment and at
most one fewer clause of the opposite one (joined by "but"), so the label is always the majority.
Because we know which words carry sentiment, we can check what an attribution method points at.
Nothing is generated, downloaded or seeded when this module is imported.
"""
from __future__ import annotations

import html
import random
import re
from collections import Counter
from typing import Iterable, Sequence

import torch

__all__ = ["POSITIVE_WORDS", "NEGATIVE_WORDS", "LABELS", "PAD", "UNK", "movie_reviews", "tokenize",
           "build_vocab", "encode", "word_highlights"]

POSITIVE_WORDS = ("great", "wonderful", "brilliant", "superb", "delightful", "moving", "excellent",
                  "charming", "gripping", "beautiful")
NEGATIVE_WORDS = ("awful", "boring", "terrible", "dull", "clumsy", "tedious", "dreadful", "bland",
                  "messy", "forgettable")
LABELS = ("negative", "positive")        # label 0 and label 1
PAD, UNK = 0, 1                          # the first two entries of every vocabulary

_SUBJECTS = ("the film", "the movie", "the plot", "the acting", "the story", "the script",
             "the ending", "the cast", "the music", "the dialogue", "this sequel", "the camera work")
_LINKS = ("was", "is", "felt", "seemed", "was really", "was quite", "is simply", "looked")
_CLAUSES = ("{s} {l} {w}", "i thought {s} {l} {w}", "honestly {s} {l} {w}", "{s} {l} {w} overall",
            "what a {w} film", "my friends found {s} {w}")
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def _clause(rng: random.Random, word: str) -> str:
    """One clause carrying `word`, with a random subject, verb and template."""
    return rng.choice(_CLAUSES).format(s=rng.choice(_SUBJECTS), l=rng.choice(_LINKS), w=word)


def movie_reviews(n: int = 1000, seed: int = 0, mixed: float = 0.3) -> tuple[list[str], list[int]]:
    """`n` generated reviews and their labels (1 positive, 0 negative), the same for the same arguments.

    About half are positive. With probability `mixed` a review with two clauses of its own
    sentiment also gets one clause of the opposite one ("..., but ..." or "although ..., ..."),
    so the label is still the majority.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not 0 <= mixed <= 1:
        raise ValueError(f"mixed must be a probability between 0 and 1, got {mixed!r}")
    rng = random.Random(f"movie-reviews-{seed}")
    texts, labels = [], []
    for _ in range(n):
        label = rng.randrange(2)
        own, other = (POSITIVE_WORDS, NEGATIVE_WORDS) if label else (NEGATIVE_WORDS, POSITIVE_WORDS)
        n_own = rng.choice((1, 2))
        clauses = [_clause(rng, rng.choice(own)) for _ in range(n_own)]
        text = " and ".join(clauses)
        if n_own == 2 and rng.random() < mixed:
            against = _clause(rng, rng.choice(other))
            text = f"{text} , but {against}" if rng.random() < 0.5 else f"although {against} , {text}"
        texts.append(text + " .")
        labels.append(label)
    return texts, labels


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of `text` (HTML line breaks become spaces)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower().replace("<br />", " "))


def build_vocab(texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> list[str]:
    """Index -> token: `<pad>`, `<unk>`, then tokens seen at least `min_freq` times, most frequent first."""
    if min_freq < 1:
        raise ValueError(f"min_freq must be at least 1, got {min_freq}")
    counts = Counter(tok for text in texts for tok in tokenize(text))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return ["<pad>", "<unk>"] + words[:max_size]


def encode(texts: Sequence[str], vocab: Sequence[str], max_len: int | None = None) -> torch.Tensor:
    """Token ids `[N, L]` (long), padded with PAD at the end; unknown tokens become UNK."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of reviews; for one review pass [text]")
    if len(vocab) < 2 or vocab[PAD] != "<pad>" or vocab[UNK] != "<unk>":
        raise ValueError("vocab must start with '<pad>', '<unk>' (make it with build_vocab)")
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(t, UNK) for t in tokenize(text)][:max_len] for text in texts]
    out = torch.full((len(rows), max((len(r) for r in rows), default=0)), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def word_highlights(words: Sequence[str], scores: Sequence[float]) -> str:
    """The words as HTML, each on a background coloured by its score (green up, red down, opacity
    by size relative to the largest): attributions you can read at a glance."""
    if isinstance(words, str):
        raise TypeError("words must be a list of tokens (e.g. tokenize(text)), not one string")
    values = scores.tolist() if isinstance(scores, torch.Tensor) else list(scores)
    if len(values) != len(words):
        raise ValueError(f"got {len(values)} scores for {len(words)} words: give one score per word "
                         "(drop the padding positions first)")
    top = max((abs(v) for v in values), default=0.0) or 1.0
    spans = [f'<span title="{v:+.4f}" style="background: rgba({"0,160,0" if v > 0 else "200,0,0"},'
             f'{abs(v) / top:.2f}); padding: 1px 3px">{html.escape(w)}</span>'
             for w, v in zip(words, values)]
    return " ".join(spans)
