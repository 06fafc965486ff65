"""`export_llamafactory`: a LLaMA-Factory run that reproduces the VTC-R1 recipe on a vtcr build.

Writes into OUT:
- `vtcr_sft.yaml`: the SFT config (full fine-tuning of the language model; vision tower and
  projector frozen; lr 1e-5, cosine, warm-up 0.1, one epoch, cutoff 32768, bf16, DeepSpeed ZeRO-3,
  batch 1 x 8 accumulation) -- run it with `llamafactory-cli train OUT/vtcr_sft.yaml`. DeepSpeed is
  not installed by `pip install llamafactory` (`pip install deepspeed`, GPU only); the YAML carries a
  commented CPU-override block for a smoke run without it (recipes/train.md);
- `vtcr_sft.json`: the build's samples in LLaMA-Factory's sharegpt form with ABSOLUTE image paths
  (and absolute `file_name` in `dataset_info.json`), so the entry still resolves when merged into
  another dataset folder (LLaMA-Factory joins relative paths to `media_dir`, an absolute one stays);
- `dataset_info.json`: the dataset entry, to merge into another LLaMA-Factory data folder;
- `ds_z3_config.json`: a ZeRO-3 config whose sizes Trainer fills in ("auto");
- `vtcr.json`: the render preset and image cap to copy next to the trained weights, so the
  engine renders and resizes as in training;
- `model/` (only with an image cap): the model folder as symlinks, with its image-processor size
  set to the cap, because LLaMA-Factory resizes with the model's own processor.

Image size (the paper's config shrank training pages to 262,144 pixels while inference sent full
pages): LLaMA-Factory first shrinks any image above `image_max_pixels` (and grows any below
`image_min_pixels`), then runs the model's processor. The export sets `image_max_pixels` to the
processor's own per-image maximum and `image_min_pixels` to 0, so pages reach the processor
untouched and are resized exactly as `vtcr reason` resizes them; the cap, when there is one,
lives in the processor (`model/`). `pages_pre_resized` counts the pages that LLaMA-Factory would
still touch (pages larger than the processor's maximum; 0 for normal pages).

Templates (LLaMA-Factory 0.9.5's definitions, re-stated in `LF_FORMATS` and checked against the
checkpoint's own chat template on the build's first sample): Qwen3-VL -> `qwen3_vl_nothink`,
Qwen2.5-VL -> `qwen2_vl`, GLM-4.1V -> `glm_ocr` (the same format as `glm4v`). The reasoning
templates `qwen3_vl` and `glm4v` are avoided: they prepend an empty think block to every target that
holds no think tag -- every middle segment of a VTC-R1 sample. Token ids then equal `vtcr train`'s;
the loss spans agree exactly for the Qwen Instruct templates (both train on `segment<|im_end|>\n`).
Where the checkpoint's generation prompt writes more than LLaMA-Factory's prompt -- `<think>\n` of
Qwen3-VL Thinking (the export then writes it at the start of every target), the `\n` after GLM's
`<|assistant|>` -- LLaMA-Factory also trains on those tokens; `lf_extra_target` says which, and a
prompt that matches no LLaMA-Factory template is a warning.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vtcr._io import atomic_open, write_text_atomic
from vtcr.models.checkpoint import META_FILE, write_meta
from vtcr.prompts import IMAGE_PLACEHOLDER

from .data import iter_problems, read_build

YAML_FILE = "vtcr_sft.yaml"
DATASET_INFO_FILE = "dataset_info.json"
DEEPSPEED_FILE = "ds_z3_config.json"
MODEL_OVERLAY = "model"

TEMPLATES = {"qwen3-vl": "qwen3_vl_nothink", "qwen2.5-vl": "qwen2_vl", "glm-4.1v": "glm_ocr"}
SFT_EXPORT_FILE = "vtcr_sft.json"


@dataclass(frozen=True)
class LfFormat:
    """A LLaMA-Factory template's string slots (llamafactory/data/template.py, 0.9.5), re-stated as facts.

    Rendered prompt: prefix + system.format(s) + user.format(u); supervised: assistant_lead + content
    + assistant_tail (+ the tokenizer's eos with efficient_eos). `image` replaces each `<image>`."""

    prefix: str
    system: str
    user: str
    assistant_lead: str
    assistant_tail: str
    image: str
    default_system: str | None = None


_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
LF_FORMATS = {
    "qwen3_vl_nothink": LfFormat("", "<|im_start|>system\n{}<|im_end|>\n", "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                                 "", "<|im_end|>\n", _QWEN_IMAGE),
    "qwen2_vl": LfFormat("", "<|im_start|>system\n{}<|im_end|>\n", "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
                         "", "<|im_end|>\n", _QWEN_IMAGE, default_system="You are a helpful assistant."),
    "glm_ocr": LfFormat("[gMASK]<sop>", "<|system|>\n{}", "<|user|>\n{}<|assistant|>", "\n", "<|endoftext|>",
                        "<|begin_of_image|><|image|><|end_of_image|>"),
}  # fmt: skip


def lf_prompt(fmt: LfFormat, system: str | None, user: str) -> str:
    """The prompt text LLaMA-Factory builds for one sharegpt sample (images as unexpanded placeholders)."""
    system = system if system is not None else fmt.default_system
    head = fmt.system.format(system) if system else ""
    return fmt.prefix + head + fmt.user.format(user.replace(IMAGE_PLACEHOLDER, fmt.image))


def lf_content(segment: str, conventions: Any) -> str:
    """A target as the export writes it: what the checkpoint's generation prompt opens, then the
    segment without it (so LLaMA-Factory's ids equal vtcr's prompt + target)."""
    from vtcr.models.conventions import strip_opening

    return conventions.opens + strip_opening(segment, conventions) if conventions.opens else segment


def check_lf_template(template: str, processor: Any, conventions: Any, sample: dict[str, Any]) -> tuple[str, list[str]]:
    """(the text LLaMA-Factory trains on beyond vtcr's target, warnings) for one sharegpt `sample`
    under LF template `template` and the checkpoint's chat template."""
    from vtcr.models.conventions import render_prompt

    fmt = LF_FORMATS[template]
    system, user = sample["messages"][0]["content"], sample["messages"][1]["content"]
    parts = user.split(IMAGE_PLACEHOLDER)
    items = [{"type": "text", "text": parts[0]}] + [{"type": "image", "text": None}] * (len(parts) - 1)
    ours = render_prompt(processor, [{"role": "system", "content": system}, {"role": "user", "content": items}])
    theirs = lf_prompt(fmt, system, user)
    extra = fmt.assistant_lead + conventions.opens
    warnings = []
    if ours != theirs + extra:
        warnings.append(
            f"no LLaMA-Factory template matches this checkpoint's chat template: `{template}` writes the prompt "
            f"{theirs[-120:]!r} where the checkpoint writes {ours[-120:]!r}; use `vtcr train`, or fix the template"
        )
    if fmt.assistant_tail != conventions.target_suffix:
        warnings.append(f"LLaMA-Factory's `{template}` ends a target with {fmt.assistant_tail!r}, vtcr with "
                        f"{conventions.target_suffix!r}")  # fmt: skip
    return extra, warnings
_PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")

# ZeRO-3 as LLaMA-Factory's examples use it; "auto" values come from the Trainer arguments.
DEEPSPEED_Z3 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
        "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True,
    },
}  # fmt: skip


@dataclass(frozen=True)
class LlamaFactoryExport:
    """What `export_llamafactory` wrote and what it found in the data."""

    out_dir: str
    yaml: str
    dataset_info: str
    deepspeed: str
    meta: str
    model_name_or_path: str
    template: str
    dataset: str
    image_max_pixels: int
    image_min_pixels: int
    max_image_pixels: int | None  # the cap inference uses (None: the processor's own)
    pages: int
    pages_pre_resized: int
    samples: int
    samples_without_think_tags: int
    dataset_file: str = ""
    lf_extra_target: str = ""  # text LLaMA-Factory trains on before vtcr's target (prompt text for vtcr)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar, whatever it contains


def per_image_max_pixels(processor: Any) -> int:
    """The processor's own cap on one image's area (GLM counts a still image as two frames)."""
    from vtcr.models.architectures import family
    from vtcr.models.processor import arch_of_processor

    frames = family(arch_of_processor(processor)).budget_frames
    return int(dict(processor.image_processor.size)["longest_edge"]) // frames


def capped_processor_dict(data: dict[str, Any], budget: dict[str, int]) -> dict[str, Any]:
    """An image-processor config dict with its size fields set to `budget` (shortest/longest edge)."""
    out = dict(data)
    out["size"] = dict(budget)
    if "max_pixels" in out:
        out["max_pixels"] = budget["longest_edge"]
    if "min_pixels" in out:
        out["min_pixels"] = budget["shortest_edge"]
    return out


def write_model_overlay(model_path: Path, target: Path, budget: dict[str, int]) -> Path:
    """`target`: the model folder as symlinks, its processor config files rewritten with `budget`."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(model_path.iterdir()):
        dest = target / entry.name
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.is_dir():
            shutil.rmtree(dest)
        if entry.name in _PROCESSOR_CONFIGS and entry.is_file():
            data = json.loads(entry.read_text(encoding="utf-8"))
            if entry.name == "processor_config.json":
                if isinstance(data.get("image_processor"), dict):
                    data["image_processor"] = capped_processor_dict(data["image_processor"], budget)
            else:
                data = capped_processor_dict(data, budget)
            write_text_atomic(dest, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        elif entry.name != META_FILE:
            dest.symlink_to(entry.resolve())
    return target


def _yaml(
    *, model: str, image_max_pixels: int, image_min_pixels: int, dataset: str, dataset_dir: str, media_dir: str, template: str,
    cutoff_len: int, deepspeed: str, output_dir: str, lr: float, epochs: float, batch_size: int, grad_accum: int,
    cap: int | None, warnings: list[str], yaml_path: str,
) -> str:
    cap_note = f"capped at {cap} pixels by the processor in model/" if cap else "with the processor's own size settings"
    lines = [
        "# LLaMA-Factory SFT config written by `vtcr export-llamafactory`: the VTC-R1 recipe (Glyph / Qwen3-VL SFT).",
        f"# Run: llamafactory-cli train {_q(yaml_path)}",
        f"# After training, copy {META_FILE} from this folder into output_dir so `vtcr reason` renders optical memory",
        "# with the preset the data used and resizes pages with the cap used in training.",
        *(f"# WARNING: {w}" for w in warnings),
        "",
        "### model",
        f"model_name_or_path: {_q(model)}",
        "# Pages reach the image processor untouched (the paper shrank them to 262144 pixels for training only);",
        f"# the processor then resizes them exactly as vtcr's inference does ({cap_note}).",
        f"image_max_pixels: {image_max_pixels}",
        f"image_min_pixels: {image_min_pixels}",
        "trust_remote_code: true",
        "",
        "### method",
        "stage: sft",
        "do_train: true",
        "finetuning_type: full",
        "freeze_vision_tower: true",
        "freeze_multi_modal_projector: true",
        "freeze_language_model: false",
        "# DeepSpeed ZeRO-3 (GPU only): `pip install llamafactory` does not install it -- `pip install deepspeed`.",
        f"deepspeed: {_q(deepspeed)}",
        "",
        "### dataset",
        f"dataset: {_q(dataset)}",
        f"dataset_dir: {_q(dataset_dir)}",
        "# Image paths in the dataset file are absolute; media_dir only matters for other datasets merged in.",
        f"media_dir: {_q(media_dir)}",
        f"template: {template}",
        f"cutoff_len: {cutoff_len}",
        "overwrite_cache: true",
        "preprocessing_num_workers: 16",
        "dataloader_num_workers: 8",
        "",
        "### output",
        f"output_dir: {_q(output_dir)}",
        "logging_steps: 10",
        "save_strategy: epoch",
        "plot_loss: true",
        "overwrite_output_dir: true",
        "save_only_model: true",
        "report_to: none",
        "",
        "### train",
        f"per_device_train_batch_size: {batch_size}",
        f"gradient_accumulation_steps: {grad_accum}",
        f"learning_rate: {lr:.1e}",
        f"num_train_epochs: {float(epochs)}",
        "lr_scheduler_type: cosine",
        "warmup_ratio: 0.1",
        "bf16: true",
        "ddp_timeout: 180000000",
        "",
        "### CPU smoke run (no GPU, no deepspeed): change these lines, do not add them twice (duplicate keys)",
        "# deepspeed: null",
        "# bf16: false",
        "# use_cpu: true",
        "# preprocessing_num_workers: 1",
        "# dataloader_num_workers: 0",
        "# max_steps: 2",
    ]
    return "\n".join(lines) + "\n"


def export_llamafactory(
    data: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_image_pixels: int | None = None,
    cutoff_len: int = 32768,
    lr: float = 1e-5,
    epochs: float = 1.0,
    batch_size: int = 1,
    grad_accum: int = 8,
    output_dir: str | None = None,
    render_preset: str | None = None,
    render_config: str | None = None,
    overwrite: bool = False,
) -> LlamaFactoryExport:
    """Write a LLaMA-Factory config for training `model` on the build `data` into `out`.

    max_image_pixels: the image cap inference will use (None: the model's vtcr.json cap, else the
    processor's own maximum). output_dir: where LLaMA-Factory saves (default OUT/saves).
    Raises FileNotFoundError / ValueError naming the bad input.
    """
    from vtcr.models import resolve_model_path
    from vtcr.models.checkpoint import ModelMeta, read_meta
    from vtcr.models.processor import arch_of_processor, image_size_budget, load_processor

    from .config import TrainConfig
    from .data import missing_images
    from .trainer import recorded_render_config

    for name, value in (("cutoff_len", cutoff_len), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    build = read_build(data)
    model_path = resolve_model_path(model).resolve()
    processor = load_processor(model_path)  # FileNotFoundError: no processor; ValueError: unsupported arch
    arch = arch_of_processor(processor)
    meta = read_meta(model_path)
    cap = max_image_pixels if max_image_pixels is not None else meta.max_image_pixels
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"max_image_pixels must be a positive int, got {cap!r}")
    settings_check = TrainConfig(data=str(build.path), model=str(model_path), out=str(out), render_preset=render_preset,
                                 render_config=render_config)  # fmt: skip
    render = recorded_render_config(settings_check, build, meta)

    records = list(iter_problems(build))
    if not records:
        raise ValueError(f"{build.path} holds no built problem")
    missing = missing_images(build, records)
    if missing:
        raise FileNotFoundError(f"{build.path}: {len(missing)} referenced image(s) missing: {', '.join(missing[:10])}")

    out_dir = Path(out).expanduser().resolve()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} already exists and is not empty (pass --overwrite)")
    out_dir.mkdir(parents=True, exist_ok=True)

    image_max = per_image_max_pixels(processor)
    image_min = 0
    areas = {page["file"]: page["width"] * page["height"] for r in records for pages in r["pages"] for page in pages}
    pre_resized = sum(1 for a in areas.values() if a > image_max or a < image_min)
    samples = sum(len(r["turns"]) for r in records)
    bare = sum(1 for r in records for t in r["turns"] if "<think>" not in t and "</think>" not in t)

    from vtcr.data.samples import sharegpt_sample
    from vtcr.models.conventions import chat_conventions

    conventions = chat_conventions(processor.chat_template or "", arch, source=f"the chat template of {model_path}")
    template = TEMPLATES[arch]
    first = sharegpt_sample(records[0], 0, build.system_prompt)
    extra, warnings = check_lf_template(template, processor, conventions, first)
    if extra:
        warnings.append(
            f"LLaMA-Factory also trains on {extra!r} at the start of every target (the checkpoint's generation "
            "prompt writes it, so `vtcr train` counts it as prompt); the token ids are the same"
        )
    if pre_resized:
        warnings.append(f"{pre_resized} page(s) exceed the processor's maximum; LLaMA-Factory shrinks them twice")

    model_name = str(model_path)
    if cap is not None:
        budget = image_size_budget(processor, cap)
        model_name = str(write_model_overlay(model_path, out_dir / MODEL_OVERLAY, budget))
    elif (out_dir / MODEL_OVERLAY).exists():
        shutil.rmtree(out_dir / MODEL_OVERLAY)

    from vtcr.data.outputs import dataset_info

    ds_path = out_dir / DEEPSPEED_FILE
    info_path = out_dir / DATASET_INFO_FILE
    meta_path = out_dir / META_FILE
    yaml_path = out_dir / YAML_FILE
    write_text_atomic(ds_path, json.dumps(DEEPSPEED_Z3, indent=2) + "\n")
    sft_path = out_dir / SFT_EXPORT_FILE
    with atomic_open(sft_path) as fh:  # one sample at a time: a build can hold 100k samples
        fh.write("[")
        n = 0
        for record in records:
            for k in range(len(record["turns"])):
                row = sharegpt_sample(record, k, build.system_prompt)
                row["images"] = [str(build.path / name) for name in row["images"]]
                row["messages"][-1]["content"] = lf_content(row["messages"][-1]["content"], conventions)
                fh.write(("," if n else "") + "\n" + json.dumps(row, ensure_ascii=False))
                n += 1
        fh.write("\n]\n")
    entry = dataset_info(build.dataset_name, file_name=str(sft_path))
    write_text_atomic(info_path, json.dumps(entry, indent=2) + "\n")
    trained_meta = ModelMeta(
        arch=arch, size=meta.size, created_by="vtcr export-llamafactory", max_image_pixels=cap,
    ).with_render(render)  # fmt: skip
    write_meta(out_dir, trained_meta)
    write_text_atomic(
        yaml_path,
        _yaml(
            model=model_name, image_max_pixels=image_max, image_min_pixels=image_min, dataset=build.dataset_name,
            dataset_dir=str(out_dir), media_dir=str(build.path), template=template, cutoff_len=cutoff_len, deepspeed=str(ds_path),
            output_dir=output_dir or str(out_dir / "saves"), lr=lr, epochs=epochs, batch_size=batch_size,
            grad_accum=grad_accum, cap=cap, warnings=warnings, yaml_path=str(yaml_path),
        ),
    )  # fmt: skip
    return LlamaFactoryExport(
        out_dir=str(out_dir), yaml=str(yaml_path), dataset_info=str(info_path), deepspeed=str(ds_path),
        meta=str(meta_path), model_name_or_path=model_name, template=template, dataset=build.dataset_name,
        image_max_pixels=image_max, image_min_pixels=image_min, max_image_pixels=cap, pages=len(areas),
        pages_pre_resized=pre_resized, samples=samples, samples_without_think_tags=bare, dataset_file=str(sft_path),
        lf_extra_target=extra, warnings=warnings,
    )  # fmt: skip
