"""Chat formats: Orion's ``Human/Assistant`` format and the Llama-3 format over Orion's vocabulary.

Both are Jinja templates (the converted students carry ``LLAMA3_TEMPLATE`` as their ``chat_template``), and
:func:`render` applies them without a tokenizer. Orion's vocabulary has no Llama-3 special tokens, and the
vocabulary must not change, so the Llama-3 structure is kept with Orion's own specials: ``<|begin_of_text|>``
is ``<s>``, ``<|eot_id|>`` is ``</s>`` (so generation stops at EOS as it does for Orion), and the header
markers are plain text. ``LLAMA3_TEMPLATE`` is written so that llama.cpp does not mistake it for real Llama-3
(see the comment on it; checked against llama.cpp itself by ``python -m bench.run llamacpp``).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Literal

import jinja2

ChatFormat = Literal["orion", "llama3"]

# Orion-Chat: <s>Human: {q}\n\nAssistant: </s>{answer}</s>Human: ...
ORION_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Human: {{ m['content'] }}\n\nAssistant: {{ eos_token }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

# Llama-3 layout; <|begin_of_text|> -> bos_token, <|eot_id|> -> eos_token (see module docstring). The header
# markers are joined from two string pieces so that the template source never contains "<|start_header_id|>":
# llama.cpp's non-Jinja chat path picks a built-in renderer by substring, and on that marker renders real
# Llama-3 (a literal <|eot_id|> for </s>, no <s>), a different prompt, silently. Split, the source matches no
# built-in renderer, and llama.cpp either renders it with its Jinja engine (the same text as transformers) or
# refuses ("this custom template is not supported"). The rendered text is unchanged.
LLAMA3_TEMPLATE = (
    "{% set sh = '<|start_header' + '_id|>' %}{% set eh = '<|end_header' + '_id|>' %}"
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ sh }}{{ m['role'] }}{{ eh }}\n\n{{ m['content'] | trim }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ sh }}assistant{{ eh }}\n\n{% endif %}"
)

TEMPLATES: dict[str, str] = {"orion": ORION_TEMPLATE, "llama3": LLAMA3_TEMPLATE}

_env = jinja2.Environment(keep_trailing_newline=True)


def render(
    messages: Iterable[dict[str, str]],
    fmt: ChatFormat,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
) -> str:
    """Render ``[{"role": "user"|"assistant"|"system", "content": ...}, ...]`` in ``fmt``.

    Orion's format always ends a user turn with the assistant cue, so ``add_generation_prompt`` only
    matters for Llama-3.
    """
    if fmt not in TEMPLATES:
        raise ValueError(f"unknown chat format {fmt!r}; expected one of {sorted(TEMPLATES)}")
    return _env.from_string(TEMPLATES[fmt]).render(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def encode_with_specials(
    text: str, encode: Callable[[str], list[int]], specials: dict[str, int]
) -> list[int]:
    """Token ids of ``text`` where each special-token string (``<s>``, ``</s>``) becomes its id and the pieces
    between them go through ``encode`` (e.g. a SentencePiece ``encode``), as HF tokenizers split specials."""
    if not specials:
        return encode(text)
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for piece in re.split(pattern, text):
        if not piece:
            continue
        ids.extend([specials[piece]] if piece in specials else encode(piece))
    return ids
