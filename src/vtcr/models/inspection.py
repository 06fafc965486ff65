"""`inspect_model`: what vtcr reads from a checkpoint folder and what it will do with it.

Offline for a local folder (a full checkpoint, a vtcr checkpoint, or a metadata-only folder such as
those in ../shared/models); a hub id downloads only the small metadata files (needs the hub).

    report = inspect_model("../shared/models/Qwen__Qwen3-VL-8B-Thinking")
    report.to_dict()["template"]["opens_think"]   # True
    print("\\n".join(report.lines()))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

A4_PAGE = (595, 842)  # an A4 page rendered at 72 dpi, in pixels (width, height)
_METADATA_PATTERNS = ["*.json", "*.jinja"]


@dataclass(frozen=True)
class ModelReport:
    """What `inspect_model` found. `to_dict` is the `vtcr inspect-model --json` output."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def lines(self) -> list[str]:
        d = self.data
        t, img = d["template"], d["images"]
        out = [
            f"{d['path']}",
            f"  family        {d['family']} (from {d['family_from']})",
            f"  architecture  {d['architecture']}",
            f"  chat template {t['file']}",
            f"    generation prompt {t['generation_prompt']!r}; opens_think {t['opens_think']}",
            f"    default system prompt {t['default_system']!r}",
            f"    image placeholder {t['image_placeholder']!r} = ids {t['image_placeholder_ids']} ({t['ids_from']})",
            f"    end of turn {t['end_of_turn']!r}, then {t['after_end_of_turn']!r}",
            f"  images        patch {img['patch_size']}, merge {img['merge_size']}, {img['min_pixels']:,} to "
            f"{img['max_pixels']:,} pixels ({img['from']}); an A4 page at 72 dpi (595x842) = "
            f"{img['tokens_per_page']} vision tokens",
            f"  stop ids      {d['stop_ids']} ({d['stop_ids_from']})",
            f"  pages         {d['render']['preset'] or 'a custom render config'} ({d['render']['from']})",
            "  what vtcr will do:",
            *(f"    - {line}" for line in d["plan"]),
        ]
        return out


def _token_ids(meta: Any, tokenizer: Any, tokens: list[str]) -> tuple[list[int | None], str]:
    """Ids of `tokens`: from the folder's tokenizer, else tokenizer_config.json's added tokens,
    else the family's published ids."""
    if tokenizer is not None:
        return [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens], "the folder's tokenizer"
    added = meta.added_token_ids()
    if added and all(t in added for t in tokens):
        return [added[t] for t in tokens], "tokenizer_config.json added tokens"
    from .architectures import default_token_ids, family

    fam = family(meta.arch)
    ids = default_token_ids(meta.arch, "8b")
    published = {fam.image_start_token: ids.image_start, fam.image_token: ids.image, fam.image_end_token: ids.image_end}
    return [published.get(t) for t in tokens], f"the published {meta.arch} ids (vtcr's family table; no tokenizer here)"


def inspect_model(path_or_id: str | os.PathLike) -> ModelReport:
    """Family, template conventions, image budget, stop ids, render config and vtcr's plan for a
    checkpoint (see the module docstring). Raises ValueError / FileNotFoundError naming the bad
    file (unknown family, a template vtcr cannot split, an image config without a pixel budget)."""
    from vtcr.render import PAPER_PRESET
    from vtcr.tokens import vision_tokens

    from .architectures import dims, family
    from .checkpoint import META_FILE, read_meta, resolve_model_path
    from .conventions import chat_conventions
    from .metadata import read_metadata

    path = resolve_model_path(path_or_id, allow_patterns=_METADATA_PATTERNS)  # metadata only, no weights
    meta = read_metadata(path)
    fam = family(meta.arch)
    if meta.chat_template is None:
        raise FileNotFoundError(f"{path} holds no chat template (chat_template.jinja / chat_template.json / "
                                "tokenizer_config.json): vtcr cannot build prompts for it")  # fmt: skip
    conv = chat_conventions(meta.chat_template, meta.arch, source=str(meta.template_file))
    spec = meta.vision_spec()

    tokenizer = None
    if (path / "tokenizer.json").is_file():
        from vtcr.tokens import load_tokenizer

        tokenizer = load_tokenizer(path)
    placeholder_tokens = [fam.image_start_token, fam.image_token, fam.image_end_token]
    placeholder_ids, ids_from = _token_ids(meta, tokenizer, placeholder_tokens)

    stops = meta.stop_ids()
    stop_from = "generation_config.json eos_token_id"
    if stops is None:
        stops_named, _ = _token_ids(meta, tokenizer, list(fam.stop_tokens)) if tokenizer is not None else (None, "")
        if stops_named is not None:
            stops = tuple(stops_named)
        else:
            from .architectures import default_token_ids

            stops = default_token_ids(meta.arch, "8b").stop
        stop_from = f"the {meta.arch} family's stop tokens {', '.join(fam.stop_tokens)} (no generation_config.json)"
    eos_id = tokenizer.eos_token_id if tokenizer is not None else None
    if eos_id is not None and eos_id not in stops:
        stops = (*stops, int(eos_id))
        stop_from += " + the tokenizer's eos"

    vtcr_meta = read_meta(path) if (path / META_FILE).is_file() else None
    render = vtcr_meta.render() if vtcr_meta is not None else None
    if render is not None:
        from vtcr.render import preset_name

        render_info = {"preset": preset_name(render), "from": META_FILE,
                       "config": render.to_dict()}  # fmt: skip
    else:
        render_info = {"preset": PAPER_PRESET, "from": f"no {META_FILE}: vtcr renders the paper's pages ({PAPER_PRESET}) "
                       "for a checkpoint it did not train, with a warning", "config": None}  # fmt: skip

    if meta.config is not None:
        text, vision = meta.config.get("text_config") or {}, meta.config.get("vision_config") or {}
        architecture = (f"config.json {(meta.config.get('architectures') or ['?'])[0]}: {text.get('num_hidden_layers')} "
                        f"layers, hidden {text.get('hidden_size')}, vision depth {vision.get('depth')} "
                        "(init-model --like builds a random-weight copy at a vtcr --size)")  # fmt: skip
    else:
        d = dims(meta.arch, "8b")
        architecture = (f"no config.json: vtcr's {meta.arch} family table (8b = {d.published or 'published'} dimensions; "
                        "init-model --like builds it at --size)")  # fmt: skip

    think = (f"the generation prompt opens {conv.opens!r}: it is dropped from the start of a training target and "
             "put in front of round 1's text, so inference records and renders what build-data holds")  # fmt: skip
    plan = [
        "prompts: this chat template over the system and user turns, with its generation prompt "
        f"{conv.generation_prompt!r} (training and inference alike)",
        f"training targets: segment + {conv.target_suffix!r}" + (f"; {think}" if conv.opens else
                                                                 "; the model writes its own <think>"),
        f"stop generating on ids {list(stops)}",
        f"optical memory: {render_info['preset'] or 'the custom render config in vtcr.json'}, "
        f"{vision_tokens(A4_PAGE, spec)} vision tokens per A4 page",
        "answers: <answer>...</answer> after the last </think>, else the last box (\\boxed{} or "
        "<|begin_of_box|>...<|end_of_box|>)",
    ]
    if conv.default_system is not None:
        plan.append(f"a round without a system turn gets the template's default {conv.default_system!r} "
                    "(vtc rounds always send the VTC-R1 system prompt)")  # fmt: skip
    data = {
        "path": str(path),
        "family": meta.arch,
        "family_from": meta.arch_source,
        "architecture": architecture,
        "files": list(meta.files),
        "template": {
            "file": str(meta.template_file), **conv.to_dict(),
            "image_placeholder_tokens": placeholder_tokens, "image_placeholder_ids": placeholder_ids, "ids_from": ids_from,
        },
        "images": {
            "patch_size": spec.patch_size, "merge_size": spec.merge_size, "temporal_patch_size": spec.temporal_patch_size,
            "min_pixels": spec.min_pixels, "max_pixels": spec.max_pixels,
            "from": meta.preprocessor_file if meta.preprocessor_config is not None else f"the published {meta.arch} settings",
            "page": list(A4_PAGE), "tokens_per_page": vision_tokens(A4_PAGE, spec),
        },
        "stop_ids": list(stops),
        "stop_ids_from": stop_from,
        "render": render_info,
        "plan": plan,
    }  # fmt: skip
    return ModelReport(data)
