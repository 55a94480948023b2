"""A small, deterministic CLIP BPE vocabulary for tiny weights.

The real CLIP vocabulary (49,408 tokens, OpenAI's ``bpe_simple_vocab_16e6``) ships only with the
model hub and with packages that drag in torchvision, which does not import beside this torch.
Tiny weights therefore use a vocabulary built here the way CLIP builds its own, in the same
file format the real tokenizer loads (``vocab.json`` + ``merges.txt``), so the real
``CLIPTokenizer`` code runs unchanged:

1. the 256 byte symbols of GPT-2/CLIP's byte-to-unicode table, then the same with ``</w>``;
2. byte-pair merges learned, most frequent pair first (ties broken alphabetically), from a fixed
   English corpus of image-prompt words (:data:`CORPUS`);
3. ``<|startoftext|>`` and ``<|endoftext|>``.

Any text tokenizes (unknown words fall back to byte symbols); only the merge table is smaller.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

#: The corpus the merges are learned from. Changing it changes every tiny-weights output.
CORPUS = """
question mark floating in space an astronaut floating against a white background beautiful
view of iceland with a record player a photo of a cat sitting on a red chair in the garden
portrait of a woman with long hair in the style of an oil painting highly detailed sharp focus
landscape with mountains and a lake at sunset cinematic lighting digital art trending colors
a robot searching a database for images nvidia green colors city street at night with neon
lights rain reflections futuristic car flying over the ocean waves clouds sky stars galaxy
"""

NUM_MERGES = 300
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode symbols."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE over the words of ``corpus``, each word ending in a ``</w>`` symbol."""
    words = Counter(re.findall(r"[a-z]+|[0-9]", corpus.lower()))
    splits = {w: (*w[:-1], w[-1] + "</w>") for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            symbols = splits[word]
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in splits.items():
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = tuple(merged)
    return merges


def write_vocab(directory: Path) -> int:
    """Write ``vocab.json`` and ``merges.txt`` into ``directory``; returns the vocabulary size."""
    symbols = list(bytes_to_unicode().values())
    merges = learn_merges(CORPUS, NUM_MERGES)
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 - tiny deterministic CLIP vocabulary"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)
