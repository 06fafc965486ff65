"""Chat templates (Jinja) that write each family's real chat format.

Messages use the transformers multimodal format: ``{"role": ..., "content": str | [items]}`` with
items ``{"type": "image"}`` (``image_url`` is accepted too) and ``{"type": "text", "text": ...}``.
Images go inside the turn, in item order, as the family's placeholder; the processor expands each
placeholder to the image's vision-token count.

- Qwen3-VL:   ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>text<|im_end|>\\n``;
  no default system prompt; ``enable_thinking=True`` opens ``<think>\\n`` after the generation prompt.
- Qwen2.5-VL: the same turns, plus the family's default system prompt when none is given.
- GLM-4.1V:   ``[gMASK]<sop><|system|>\\n...<|user|>\\n<|begin_of_image|><|image|><|end_of_image|>text``
  ``<|assistant|>\\n...``; a turn ends where the next role token starts (that token is the stop token).

Assistant content is written verbatim (``<think>`` blocks included), and wrapped in
``{% generation %}`` so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks the
tokens an SFT loss should cover (for Qwen including the closing ``<|im_end|>``). vtcr's own training
does not use those marks: its loss span is the segment + end of turn after the generation prompt
(`vtcr.models.conventions`), the same rule for these templates and for real checkpoints' own.
"""

from __future__ import annotations


def _content_macro(image_placeholder: str) -> str:
    """Jinja macro rendering one message's content: a string, or a list of image/text items
    (each image becomes the family's placeholder, which the processor expands)."""
    return r"""
{%- macro render_content(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {%- for item in content -%}
            {%- if item.type in ['image', 'image_url'] or 'image' in item -%}
                {{- 'PLACEHOLDER' -}}
            {%- elif item.type == 'text' -%}
                {{- item.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
""".replace("PLACEHOLDER", image_placeholder)


_QWEN_CONTENT = _content_macro("<|vision_start|><|image_pad|><|vision_end|>")

_QWEN_TURNS = r"""
{%- for message in messages -%}
    {%- if message.role == 'assistant' -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- generation -%}
            {{- render_content(message.content) + '<|im_end|>' -}}
        {%- endgeneration -%}
        {{- '\n' -}}
    {%- else -%}
        {{- '<|im_start|>' + message.role + '\n' + render_content(message.content) + '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and enable_thinking -%}
        {{- '<think>\n' -}}
    {%- endif -%}
{%- endif -%}
"""

QWEN3_VL_TEMPLATE = _QWEN_CONTENT + _QWEN_TURNS

QWEN2_5_VL_TEMPLATE = (
    _QWEN_CONTENT
    + r"""
{%- if messages[0].role != 'system' -%}
    {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
{%- endif -%}
"""
    + _QWEN_TURNS
)

GLM4V_TEMPLATE = (
    _content_macro("<|begin_of_image|><|image|><|end_of_image|>")
    + r"""{{- '[gMASK]<sop>' -}}
{%- for message in messages -%}
    {%- if message.role == 'assistant' -%}
        {{- '<|assistant|>\n' -}}
        {%- generation -%}
            {{- render_content(message.content) -}}
        {%- endgeneration -%}
    {%- else -%}
        {{- '<|' + message.role + '|>\n' + render_content(message.content) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|assistant|>\n' -}}
{%- endif -%}
"""
)

_TEMPLATES = {"qwen3-vl": QWEN3_VL_TEMPLATE, "qwen2.5-vl": QWEN2_5_VL_TEMPLATE, "glm-4.1v": GLM4V_TEMPLATE}


def chat_template(arch: str) -> str:
    """The Jinja chat template of `arch` (one of vtcr.models.ARCHS)."""
    if arch not in _TEMPLATES:
        raise ValueError(f"no chat template for arch {arch!r}; choose one of {', '.join(_TEMPLATES)}")
    return _TEMPLATES[arch].strip()
