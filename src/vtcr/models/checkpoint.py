"""Create, save and load VLM checkpoints: ordinary Hugging Face folders plus a small ``vtcr.json``.

``init_model`` builds a randomly initialised model of a real architecture (deterministic for a
seed) with a tokenizer fitted to the family, the family's chat template and image processor, and
saves it with ``save_pretrained``. ``load_model`` loads any such folder, or a real downloaded
checkpoint of a supported family, with its processor and vtcr metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from vtcr._io import write_json_atomic
from vtcr.render.presets import DEFAULT_PRESET

from .architectures import arch_of, build_config, dims, family, resolve_size

META_FILE = "vtcr.json"


@dataclass(frozen=True)
class ModelMeta:
    """What vtcr needs to know about a checkpoint beyond the HF files (``vtcr.json``).

    render_config: the Glyph/VTC-R1 JSON of the pages the model was trained to read (the engine
    renders optical memory with it); render_preset: that config's preset name, when it is one.
    Older vtcr.json files carry only the name. Neither: the model's pages are unknown (a checkpoint
    vtcr did not make), see `vtcr.render.resolve_render_config`. max_image_pixels: cap on each
    image's resized area (None: the family's own cap).
    """

    arch: str
    size: str | None = None
    render_preset: str | None = None
    render_config: dict[str, Any] | None = None
    created_by: str | None = None
    max_image_pixels: int | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def render(self):
        """The RenderConfig the model was trained with, or None when vtcr.json does not say."""
        from vtcr.render import render_config

        if self.render_config is not None:
            config = render_config(self.render_config)
            return config if self.render_preset is None or config.name == self.render_preset else config.replace(name=self.render_preset)
        return render_config(self.render_preset)

    def with_render(self, spec: Any) -> ModelMeta:
        """This meta recording `spec` (preset name, JSON file, RenderConfig; None: unknown)."""
        from vtcr.render import preset_name, render_config

        config = render_config(spec)
        if config is None:
            return replace(self, render_preset=None, render_config=None)
        return replace(self, render_preset=preset_name(config), render_config=config.to_dict())


def read_meta(path: str | os.PathLike) -> ModelMeta:
    """The folder's vtcr.json, or defaults derived from config.json when there is none."""
    path = Path(path)
    meta_file = path / META_FILE
    if meta_file.is_file():
        try:
            return ModelMeta.from_dict(json.loads(meta_file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"{meta_file} is not a valid vtcr.json: {exc}") from exc
    return ModelMeta(arch=arch_of(path))


def write_meta(folder: str | os.PathLike, meta: ModelMeta) -> Path:
    return write_json_atomic(Path(folder) / META_FILE, meta.to_dict())


def _check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty (pass overwrite=True / --overwrite)")
    return out


def save_checkpoint(
    model: Any, processor: Any, out_dir: str | os.PathLike, meta: ModelMeta, *, overwrite: bool = False
) -> Path:
    """Save model + processor + vtcr.json as one folder, atomically.

    Everything is written to a hidden sibling folder first and renamed into place, so a crash
    never leaves a half-written checkpoint under `out_dir`.
    """
    out = _check_out_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        write_meta(tmp, meta)
        # mkdtemp/mkstemp create owner-only entries; a checkpoint is meant to be shared.
        os.chmod(tmp, 0o755)
        for item in tmp.rglob("*"):
            os.chmod(item, 0o755 if item.is_dir() else 0o644)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _torch_dtype(dtype: Any):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        **dict.fromkeys(("bf16", "bfloat16"), torch.bfloat16),
        **dict.fromkeys(("fp16", "float16", "half"), torch.float16),
        **dict.fromkeys(("fp32", "float32", "float"), torch.float32),
    }
    if str(dtype).lower() not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[str(dtype).lower()]


def init_model(
    arch: str,
    size: str,
    tokenizer: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    render: Any = DEFAULT_PRESET,
    *,
    device: str = "cpu",
    dtype: Any = None,
    overwrite: bool = False,
) -> Path:
    """Create a randomly initialised checkpoint of a real VLM architecture and return its folder.

    arch: "qwen3-vl" | "qwen2.5-vl" | "glm-4.1v"; size: "tiny" | "small" | "2b" | "8b" (see
    vtcr.models.architectures). tokenizer: a local folder / tokenizer.json, or a hub id when
    online; the family's control tokens are added when missing and the config's token ids and
    vocabulary follow the tokenizer. Same (arch, size, tokenizer, seed, device, dtype) -> same
    weights. render: the render config recorded in vtcr.json (a preset name, a JSON file or a
    RenderConfig; the pages this model is meant to read). dtype: fp32 for tiny/small and bf16 for 2b/8b unless given; device: where weights
    are initialised ("cuda" makes the 8b sizes fast).
    """
    fam = family(arch)
    size = resolve_size(arch, size)  # validate before the slow imports and the model build
    _check_out_dir(out_dir, overwrite)

    import torch
    from transformers import GenerationConfig

    from .processor import make_processor
    from .tokenizer import load_family_tokenizer, prepare_tokenizer

    torch_dtype = _torch_dtype(dtype) or (torch.float32 if size in ("tiny", "small") else torch.bfloat16)

    tok = load_family_tokenizer(tokenizer)
    ids = prepare_tokenizer(tok, arch, published_vocab_size=dims(arch, size).vocab_size)
    config = build_config(arch, size, ids)

    model = _random_model(config, seed, device, torch_dtype)
    model.generation_config = GenerationConfig(eos_token_id=list(ids.stop), pad_token_id=ids.pad, bos_token_id=ids.bos)

    processor = make_processor(arch, tok)
    meta = ModelMeta(arch=fam.arch, size=size, created_by="vtcr init-model", seed=seed).with_render(render)
    return save_checkpoint(model, processor, out_dir, meta, overwrite=overwrite)


def _random_model(config: Any, seed: int, device: str, dtype: Any):
    """A randomly initialised model of `config`, the same for the same seed; the caller's RNG is untouched."""
    import torch
    from transformers import AutoModelForImageTextToText

    target = torch.device(device)
    with torch.random.fork_rng(devices=[target.index or 0] if target.type == "cuda" else []):
        torch.manual_seed(seed)
        with target:
            model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    return model.eval()


def _check_config_ids(config: Any, arch: str, tokenizer: Any, tokenizer_name: str, where: str) -> None:
    """ValueError when the real config's control-token ids are not the tokenizer's (the model would
    read image placeholders as other tokens)."""
    names = {"image_token_id": "image_token", "video_token_id": "video_token"}
    for attr in ("vision_start_token_id", "image_start_token_id"):
        if getattr(config, attr, None) is not None:
            names[attr] = "image_start_token"
    for attr in ("vision_end_token_id", "image_end_token_id"):
        if getattr(config, attr, None) is not None:
            names[attr] = "image_end_token"
    fam = family(arch)
    wrong = []
    for attr, token_field in names.items():
        token = getattr(fam, token_field)
        want = getattr(config, attr, None)
        got = tokenizer.convert_tokens_to_ids(token)
        if want is not None and want != got:
            wrong.append(f"{token} is {got} in the tokenizer but {attr} {want} in {where}")
    vocab = config.get_text_config().vocab_size
    top = max(tokenizer.get_vocab().values()) + 1
    if top > vocab:
        wrong.append(f"the tokenizer has ids up to {top - 1}, beyond the vocabulary of {vocab} in {where}")
    if wrong:
        raise ValueError(f"tokenizer {tokenizer_name} does not fit {where}: {'; '.join(wrong)}. Use the checkpoint's tokenizer")


def init_model_like(
    like: str | os.PathLike,
    size: str,
    tokenizer: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    chat_template: str | os.PathLike | None = None,
    seed: int = 0,
    render: Any = DEFAULT_PRESET,
    device: str = "cpu",
    dtype: Any = None,
    overwrite: bool = False,
) -> Path:
    """A random-weight checkpoint built from a real checkpoint's metadata folder `like` (no weights).

    Its config.json shrunk to `size` (a folder without one: vtcr's family table at `size`); its chat
    template, unchanged (or `chat_template`, a .jinja file or a JSON holding "chat_template", e.g.
    the Thinking template over the Instruct folder, whose architecture it shares); its
    generation_config.json (else the family's stop tokens); its preprocessor_config.json (else the
    family's published image settings). `tokenizer` must carry every control token of the family
    (refused otherwise, naming the missing ones): the real Qwen3 files (``builtin:qwen3``) for Qwen,
    ``builtin:glm-4.1v`` (a stand-in) for GLM-4.1V. Saved like `init_model`'s folders.
    """
    from .conventions import chat_conventions
    from .metadata import read_metadata

    meta_files = read_metadata(like, chat_template)  # family, template; unknown families are refused
    arch = meta_files.arch
    size = resolve_size(arch, size)
    source = str(meta_files.template_file or like)
    if meta_files.chat_template is None:
        raise FileNotFoundError(f"{like} holds no chat template (chat_template.jinja / chat_template.json / "
                                "tokenizer_config.json): pass --chat-template FILE")  # fmt: skip
    chat_conventions(meta_files.chat_template, arch, source=source)  # refuses a template vtcr cannot split
    meta_files.vision_spec()  # refuses a preprocessor config without a pixel budget
    _check_out_dir(out_dir, overwrite)

    import torch
    from transformers import GenerationConfig

    from .processor import make_image_processor, make_processor
    from .tokenizer import check_family_tokens, load_family_tokenizer, token_ids

    tok = load_family_tokenizer(tokenizer)
    check_family_tokens(tok, arch, str(tokenizer))
    fam = family(arch)
    tok_config = meta_files.tokenizer_config or {}
    tok.eos_token = tok_config.get("eos_token") or fam.eos_token
    tok.pad_token = tok_config.get("pad_token") or fam.pad_token
    tok.chat_template = meta_files.chat_template
    ids = token_ids(tok, arch, published_vocab_size=dims(arch, size).vocab_size)
    config = meta_files.config_at(size, ids)
    if meta_files.config is not None:
        _check_config_ids(config, arch, tok, str(tokenizer), str(meta_files.folder / "config.json"))

    torch_dtype = _torch_dtype(dtype) or (torch.float32 if size in ("tiny", "small") else torch.bfloat16)
    model = _random_model(config, seed, device, torch_dtype)
    if meta_files.generation_config is not None:
        model.generation_config = GenerationConfig.from_dict(dict(meta_files.generation_config))
    else:
        model.generation_config = GenerationConfig(eos_token_id=list(ids.stop), pad_token_id=ids.pad, bos_token_id=ids.bos)

    image_processor = make_image_processor(
        arch, meta_files.preprocessor_config, where=str(meta_files.folder / meta_files.preprocessor_file)
    ) if meta_files.preprocessor_config is not None else make_image_processor(arch)  # fmt: skip
    processor = make_processor(arch, tok, meta_files.chat_template, image_processor)
    meta = ModelMeta(arch=arch, size=size, created_by=f"vtcr init-model --like {Path(like).name}", seed=seed)
    return save_checkpoint(model, processor, out_dir, meta.with_render(render), overwrite=overwrite)


def resolve_model_path(path_or_id: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local checkpoint folder, or a hub id resolved through the local Hugging Face cache
    (downloaded when online; only the files matching `allow_patterns` when given)."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        return path
    text = str(path_or_id)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, allow_patterns=allow_patterns))
        except Exception as exc:
            raise FileNotFoundError(
                f"model {text!r} is neither a local folder nor an available hub model ({exc})"
            ) from None
    raise FileNotFoundError(f"model folder {path} does not exist")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(path: str | os.PathLike, device: Any = None, dtype: Any = None):
    """Load a checkpoint folder: returns (model, processor, meta).

    device: default "cuda" when available, else "cpu". dtype: default bf16 on CUDA, fp32 on CPU.
    meta is the folder's vtcr.json (defaults for a real downloaded checkpoint without one).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    from .processor import load_processor

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder: config.json is missing")
    processor = load_processor(path)
    meta = read_meta(path)
    device = torch.device(device or default_device())
    torch_dtype = _torch_dtype(dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), dtype=torch_dtype, device_map=None if device.type == "cpu" else str(device)
    )
    model.to(device)
    model.eval()
    return model, processor, meta
