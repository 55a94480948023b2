"""Prompt encoding for Stable Diffusion pipelines: plain, or with weights and blends.

:func:`encode` is the one place a module turns its prompts into conditioning. Without weighting
it is diffusers' own ``encode_prompt``. With weighting (``weighted=True``) the prompt is read in
the emphasis syntax of AUTOMATIC1111's web UI, the one the guides use, and encoded by ``compel``:

* ``(word:1.4)`` multiplies the weight of ``word`` by 1.4; ``(word)`` by 1.1; ``[word]`` divides
  it by 1.1; brackets nest and multiply (``((word))`` is 1.21); ``\\(``, ``\\)``, ``\\[``, ``\\]``
  and ``\\\\`` are the characters themselves; a bracket left open applies to the rest of the
  prompt; a closing bracket with none open is text. A negative weight counts as 0.
* ``("a red fox", "a blue bird").blend(0.7, 0.3)``, as the whole prompt: compel's blend, the
  weighted mean (weights normalised) of the parts' conditionings; each part is read as above.
* A1111's ``BREAK``, prompt editing ``[a:b:0.5]`` and alternation ``[a|b]`` are sampler
  features of that UI, not weights: here they are text, as written.

Parsing (:func:`parse`) is this module's, after the format's published description; the
weighting is compel's: the hidden states of a weighted token are moved from the empty prompt's
by the weight (above 1), or towards the prompt without that fragment (below 1). Fragments of the
same weight are merged before encoding, so ``(red:1.0) fox`` is exactly ``red fox``. A prompt
longer than the text encoder's 77 tokens is encoded in 77-token chunks (each with its start and
end tokens, split at a sentence, phrase or word end), whose hidden states are concatenated, as
compel does; the pooled embedding, a single vector, reads the first chunk (as diffusers'). Both
SDXL text encoders read the same fragments; a multi-vector textual-inversion token expands to
its vectors' tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: What ``(...)`` multiplies a weight by, and ``[...]`` divides it by.
EMPHASIS = 1.1

_TOKEN = re.compile(
    r"""
    \\(?P<escaped>.)                                                   # \( \) \[ \] \\ ...
    | :\s*(?P<weight>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)                 # :1.4)
    | (?P<bracket>[()\[\]])
    | (?P<text>[^\\()\[\]:]+|:|\\)
    """,
    re.VERBOSE | re.DOTALL,
)
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_BLEND = re.compile(
    rf"\s*\(\s*(?P<parts>{_QUOTED}(?:\s*,\s*{_QUOTED})+)\s*\)"
    rf"\.blend\(\s*(?P<weights>{_NUMBER}(?:\s*,\s*{_NUMBER})*)\s*\)\s*",
    re.DOTALL,
)


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text and its weight."""

    text: str
    weight: float = 1.0


def parse(prompt: str) -> list[Fragment]:
    """The weighted fragments of ``prompt`` in A1111's emphasis syntax (module docstring);
    adjacent fragments of one weight are merged, and a prompt without text is one empty
    fragment."""
    pieces: list[list[Any]] = []  # [text, weight], weights multiplied in place
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(prompt):
        kind, value = match.lastgroup, match.group(match.lastgroup or 0)
        if kind == "escaped":
            pieces.append([value, 1.0])
        elif kind == "weight" and round_open:
            scale(round_open.pop(), max(0.0, float(value)))
        elif kind == "bracket" and value == "(":
            round_open.append(len(pieces))
        elif kind == "bracket" and value == "[":
            square_open.append(len(pieces))
        elif kind == "bracket" and value == ")" and round_open:
            scale(round_open.pop(), EMPHASIS)
        elif kind == "bracket" and value == "]" and square_open:
            scale(square_open.pop(), 1 / EMPHASIS)
        else:  # text, or a weight or closing bracket with nothing open: as written
            pieces.append([match.group(0), 1.0])
    for start in round_open:
        scale(start, EMPHASIS)
    for start in square_open:
        scale(start, 1 / EMPHASIS)
    merged: list[Fragment] = []
    for text, weight in pieces:
        if not text:
            continue
        if merged and merged[-1].weight == weight:
            merged[-1] = Fragment(merged[-1].text + text, weight)
        else:
            merged.append(Fragment(text, weight))
    return merged or [Fragment("")]


@dataclass(frozen=True)
class Blend:
    """Prompts whose conditionings are mixed by weight (normalised to sum to 1)."""

    prompts: tuple[tuple[Fragment, ...], ...]
    weights: tuple[float, ...]


def parse_prompt(prompt: str) -> Blend:
    """``prompt`` as a blend: of its parts for ``("a", "b").blend(w1, w2)`` (as many weights as
    parts, not all zero), or of the one prompt otherwise."""
    match = _BLEND.fullmatch(prompt)
    if match is not None:
        parts = [
            re.sub(r"\\(.)", r"\1", quoted[1:-1])
            for quoted in re.findall(_QUOTED, match.group("parts"))
        ]
        weights = [max(0.0, float(w)) for w in re.findall(_NUMBER, match.group("weights"))]
        if len(parts) == len(weights) and sum(weights) > 0:
            return Blend(tuple(tuple(parse(p)) for p in parts), tuple(weights))
    return Blend((tuple(parse(prompt)),), (1.0,))


def plain_text(fragments: Sequence[Fragment]) -> str:
    """The text of ``fragments`` without weights: what the pooled embedding reads."""
    return "".join(f.text for f in fragments)


# -------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class Conditioning:
    """What a pipeline's UNet is conditioned on, each tensor repeated for the batch.

    Attributes:
        embeds: The text encoders' hidden states, ``[batch, tokens, width]`` (SDXL: both
            encoders', concatenated along the width).
        negative: The same for the negative prompt; None without guidance.
        pooled: SDXL's pooled embedding (the second encoder's); None for SD 1.x/2.x.
        negative_pooled: The same for the negative prompt.
    """

    embeds: Any
    negative: Any = None
    pooled: Any = None
    negative_pooled: Any = None


def encode(
    pipe: Any,
    prompt: str,
    negative_prompt: str,
    *,
    batch: int,
    guidance: bool,
    weighted: bool,
) -> Conditioning:
    """Conditioning for a Stable Diffusion pipeline (SDXL base, image-to-image, inpainting or
    refiner; SD 1.x/2.x): diffusers' ``encode_prompt``, or with ``weighted`` the syntax of the
    module docstring through compel.

    An empty negative prompt gives zeros where the model asks for them (SDXL's
    ``force_zeros_for_empty_prompt``, as diffusers does); with weighting, the prompt and the
    negative prompt are padded to the same number of 77-token chunks (with the empty prompt's
    hidden states, as compel pads).
    """
    sdxl = hasattr(pipe, "text_encoder_2")
    if not weighted:
        from lilypad.ml import determinism

        encoded = pipe.encode_prompt(
            prompt=prompt,
            device=determinism.device(),
            num_images_per_prompt=batch,
            do_classifier_free_guidance=guidance,
            negative_prompt=negative_prompt or None,
        )
        return Conditioning(*encoded)
    encoders = _Encoders(pipe, sdxl)
    embeds, pooled = encoders.conditioning(parse_prompt(prompt))
    negative = negative_pooled = None
    if guidance:
        if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
            negative = [0 * t for t in embeds]
            negative_pooled = None if pooled is None else 0 * pooled
        else:
            negative, negative_pooled = encoders.conditioning(parse_prompt(negative_prompt))
        embeds, negative = encoders.pad(embeds, negative)
    return Conditioning(
        encoders.joined(embeds, batch),
        None if negative is None else encoders.joined(negative, batch),
        None if pooled is None else pooled.repeat(batch, 1),
        None if negative_pooled is None else negative_pooled.repeat(batch, 1),
    )


class _Encoders:
    """compel over each text encoder of a pipeline (the SDXL refiner has only the second)."""

    def __init__(self, pipe: Any, sdxl: bool) -> None:
        from compel import Compel, ReturnedEmbeddingsType

        pairs = [(pipe.tokenizer, pipe.text_encoder)]
        if sdxl:
            pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
        # SDXL reads the penultimate hidden state, before the final layer norm; SD 1.x/2.x the
        # last, after it
        kind = (
            ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
            if sdxl
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
        )
        self.compels = [
            Compel(
                tokenizer=tokenizer,
                text_encoder=encoder,
                textual_inversion_manager=_vectors(tokenizer),
                returned_embeddings_type=kind,
                truncate_long_prompts=False,
            )
            for tokenizer, encoder in pairs
            if encoder is not None
        ]
        self.pooled = sdxl

    def conditioning(self, blend: Blend) -> tuple[list[Any], Any]:
        """Each encoder's hidden states for ``blend`` (one chunk of 77 or more), and SDXL's
        pooled embedding (the last encoder's; of a blend, blended alike)."""
        from compel.prompt_parser import Blend as CompelBlend
        from compel.prompt_parser import Conjunction, FlattenedPrompt
        from compel.prompt_parser import Fragment as CompelFragment

        prompts = [
            FlattenedPrompt([CompelFragment(f.text, f.weight) for f in fragments])
            for fragments in blend.prompts
        ]
        conjunction = Conjunction(
            [prompts[0] if len(prompts) == 1 else CompelBlend(prompts, list(blend.weights))]
        )
        hidden = [c.build_conditioning_tensor_for_conjunction(conjunction)[0] for c in self.compels]
        if not self.pooled:
            return hidden, None
        provider = self.compels[-1].conditioning_provider
        total = sum(blend.weights)
        pooled = sum(
            provider.get_pooled_embeddings([plain_text(fragments)]) * (weight / total)
            for fragments, weight in zip(blend.prompts, blend.weights, strict=True)
        )
        return hidden, pooled

    def joined(self, hidden: list[Any], batch: int) -> Any:
        """The encoders' hidden states side by side, repeated ``batch`` times."""
        import torch

        return torch.cat(self.pad(hidden)[0], dim=-1).repeat(batch, 1, 1)

    def pad(self, *groups: list[Any]) -> list[list[Any]]:
        """Pad every encoder's tensors in ``groups`` to one number of tokens."""
        import torch

        length = max(t.shape[1] for group in groups for t in group)
        padded: list[list[Any]] = []
        for group in groups:
            out = []
            for compel, tensor in zip(self.compels, group, strict=True):
                empty = compel.conditioning_provider.empty_z.to(tensor.dtype)
                while tensor.shape[1] < length:
                    tensor = torch.cat([tensor, empty.repeat(tensor.shape[0], 1, 1)], dim=1)
                out.append(tensor)
            padded.append(out)
        return padded


def _vectors(tokenizer: Any) -> Any:
    """compel's hook for multi-vector textual-inversion tokens: ``<tok>`` becomes the tokens
    diffusers' ``load_textual_inversion`` added for its vectors (``<tok>``, ``<tok>_1``, ...)."""
    from compel import BaseTextualInversionManager

    added: dict[str, int] = tokenizer.get_added_vocab()
    expand: dict[int, list[int]] = {}
    for token, token_id in added.items():
        more: list[int] = []
        while f"{token}_{len(more) + 1}" in added:
            more.append(added[f"{token}_{len(more) + 1}"])
        if more:
            expand[token_id] = [token_id, *more]

    class Vectors(BaseTextualInversionManager):  # type: ignore[misc]
        def expand_textual_inversion_token_ids_if_necessary(self, ids: list[int]) -> list[int]:
            return [each for token_id in ids for each in expand.get(token_id, [token_id])]

    return Vectors()
