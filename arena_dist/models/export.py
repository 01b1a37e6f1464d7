"""The export format: the one writer every training recipe uses, and the loader label / predict / merge use.

A folder with
- `config.json` + `model.safetensors` (transformers `save_pretrained`; safetensors only) — the full classifier, or
  for LoRA runs `adapter_config.json` + `adapter_model.safetensors` (LoRA weights and the full head via
  modules_to_save) plus the base: `base/` (config + safetensors) when the base was random-init, else its hub id / dir
  recorded in the metadata as the training config gave it (a stage's `base_path` points elsewhere at load time);
- the tokenizer files;
- `arena_dist.json`: {label_mode, num_labels, template, max_length, head, lora, base, quantization,
  teacher_extra_inputs, created_by, config_hash, format_version}.

An MLP head is saved in the same safetensors under `score.*` (transformers' own loader only understands the linear
head; `load_export` restores either). Under ZeRO-3 the caller gathers the full state dict and passes `state_dict=`.

A quantised (QLoRA) base is never stored: re-saving bitsandbytes' packed tensors and reloading them drifts. A
random-init quantised base is rebuilt in full precision from its seeded spec under `base/`; `meta["quantization"]`
says how the model was trained, and `load_export(path, quantization=meta["quantization"])` rebuilds exactly it.

Loading never runs Python code shipped inside an export: `trust_remote_code` is the caller's (the config of the stage
the user runs), never the export's metadata, and an export whose configs map classes to its own code (`auto_map`) is
refused up front unless the caller set it. An export may come from anywhere (downloaded, shared), and transformers
imports such code while it loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from arena_dist.errors import InputError
from arena_dist.hub import is_hub_id
from arena_dist.io import atomic_directory, atomic_write_json

META_FILE = "arena_dist.json"
BASE_DIR = "base"
FORMAT_VERSION = 1
REQUIRED_META = ("label_mode", "template", "max_length")


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _head_kind(model) -> str:
    from arena_dist.models.heads import MLPHead
    from arena_dist.models.verbalizer import VerbalizerHead

    base = model.get_base_model() if _is_peft(model) else model
    score = base.score
    if hasattr(score, "modules_to_save"):  # peft ModulesToSaveWrapper
        score = score.original_module
    if isinstance(score, VerbalizerHead):
        return "verbalizer"
    return "mlp" if isinstance(score, MLPHead) else "linear"


def base_state_dict_from_peft(state_dict: dict) -> dict:
    """Full PEFT state dict -> plain base-model keys (LoRA tensors dropped, the original head kept)."""
    base = {}
    for key, tensor in state_dict.items():
        if "lora_" in key or ".modules_to_save." in key:
            continue
        name = key.removeprefix("base_model.model.")
        name = name.replace(".base_layer.", ".").replace(".original_module.", ".")
        base[name] = tensor
    return base


def save_export(model, tokenizer, out_dir: str | os.PathLike, meta: dict, state_dict: dict | None = None,
                model_config=None) -> Path:
    """Write the export folder atomically; returns its path. `meta` needs label_mode, template, max_length.

    `state_dict`: the gathered full state dict (ZeRO-3); default `model.state_dict()`. `model_config`: the
    ModelConfig the model was built from (default: the one `build_model` attached)."""
    from arena_dist.models.packed_attention import base_kernel
    from arena_dist.models.segments import recorded_markers
    from arena_dist.models.verbalizer import verbalizer_meta

    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise InputError(f"export metadata is missing {', '.join(missing)} (writing {out_dir})")
    model_config = model_config or getattr(model, "arena_model_config", None)
    is_lora = _is_peft(model)
    base_model = model.get_base_model() if is_lora else model
    base_spec = model_config.base_spec() if model_config is not None else None
    full_meta = {
        **meta,
        "num_labels": int(base_model.config.num_labels),
        "pad_token_id": base_model.config.pad_token_id,
        "head": _head_kind(model),
        **verbalizer_meta(base_model),
        "lora": is_lora,
        # the kernel it ran with (Gemma-2: eager); packing's per-example variant computes the same function
        "attn_implementation": base_kernel(base_model.config._attn_implementation),
        "base": base_spec,
        "model_config": model_config.model_dump() if model_config is not None else None,
        "quantization": model_config.quantization if model_config is not None else "none",
        "teacher_extra_inputs": meta.get("teacher_extra_inputs", []),
        "segment_markers": recorded_markers(base_model.config),
        "created_by": meta.get("created_by", "arena_dist"),
        "format_version": FORMAT_VERSION,
    }
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if is_lora:
            adapter = tmp / "adapter_model.safetensors"
            if not adapter.exists() or adapter.stat().st_size < 1024:
                raise RuntimeError(f"LoRA adapter came out empty in {out_dir} (gather the ZeRO-3 params first)")
            if base_spec is None or "name_or_path" not in base_spec:
                _save_random_init_base(model, tmp / BASE_DIR, state_dict, model_config, full_meta["segment_markers"])
                full_meta["base_dir"] = BASE_DIR
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / META_FILE, full_meta)
    return out_dir


def _save_random_init_base(peft_model, directory: Path, state: dict | None, model_config,
                           markers: dict | None) -> None:
    """The base of a LoRA export whose base has no hub id / dir. Full precision from the state dict, or, for a
    quantised base (whose packed tensors must not be stored), rebuilt from its seeded spec; its head and segment
    embeddings are replaced by the adapter's trained ones at load time."""
    if model_config is not None and model_config.quantization != "none":
        import torch

        from arena_dist.models.build import build_model

        plain = model_config.model_copy(update={"quantization": "none", "lora": None, "gradient_checkpointing": False})
        base = peft_model.get_base_model()
        with torch.no_grad():
            rebuilt = build_model(plain, int(base.config.num_labels), base.config.pad_token_id, segment_markers=markers)
        rebuilt.save_pretrained(directory, safe_serialization=True)
        return
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    peft_model.get_base_model().config.save_pretrained(directory)
    state = base_state_dict_from_peft(state if state is not None else peft_model.state_dict())
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def read_export_meta(path: str | os.PathLike) -> dict:
    meta_path = Path(path) / META_FILE
    try:
        return json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise InputError(f"{meta_path}: not an arena_dist export (metadata file missing)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_path}: unreadable metadata ({exc.msg} at line {exc.lineno})") from None


def _saved_tensors(directory: Path, prefix: str) -> dict:
    """The tensors under `prefix` (e.g. "score.") in the folder's safetensors files, prefix removed."""
    from safetensors import safe_open

    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(prefix):
                    tensors[key.removeprefix(prefix)] = handle.get_tensor(key)
    return tensors


def _load_module_weights(module, directory: Path, prefix: str, what: str) -> None:
    """Copy the saved `prefix*` tensors into a module installed after from_pretrained (MLP head, segment
    embeddings: transformers' loader does not know them)."""
    state = _saved_tensors(directory, prefix)
    if not state:
        raise InputError(f"{directory}: no {prefix}* {what} weights in the safetensors files")
    param = next(module.parameters())
    module.load_state_dict({k: v.to(dtype=param.dtype, device=param.device) for k, v in state.items()}, strict=True)


def _config_markers(directory: Path) -> dict | None:
    """The segment markers a saved config.json records (None for a hub id or a folder without them)."""
    from arena_dist.models.segments import CONFIG_KEY

    try:
        return json.loads((directory / "config.json").read_text()).get(CONFIG_KEY)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None  # a hub id or an unreadable folder: transformers reports it


REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")
ATTENTION_KERNELS = ("eager", "sdpa", "flash_attention_2")  # a hub kernel id (also accepted) would fetch and run code


def _base_path(path: Path, meta: dict, base_path: str | os.PathLike | None = None,
               setting: str = "base_path") -> Path | None:
    """Where a LoRA export's base lives: `base_path` (the stage config's `setting`, for a base moved since training),
    its `base/` folder, or the hub id / dir recorded as the training config gave it. A recorded local folder that is
    gone is a clear error naming `setting`; a hub id (`org/name`) is left to transformers."""
    if not meta.get("lora"):
        return None
    if base_path is not None:
        if not Path(base_path).is_dir():
            raise InputError(f"{path}: {setting} {base_path} is not a folder (the LoRA export's base model)")
        return Path(base_path)
    if meta.get("base_dir"):
        return path / meta["base_dir"]
    recorded = meta["base"]["name_or_path"]
    if not Path(recorded).expanduser().exists() and not is_hub_id(recorded):
        raise InputError(f"{path}: the LoRA export's base model {recorded} (recorded in {META_FILE}) is not there; "
                         f"set {setting} to the folder that holds it now")
    return Path(recorded).expanduser()


def declared_remote_code(directory: Path) -> str | None:
    """The first config in `directory` whose `auto_map` points transformers at Python code, else None. A hub id
    (no such folder) is left to transformers, which refuses remote code when trust_remote_code is False."""
    for name in REMOTE_CODE_FILES:
        try:
            data = json.loads((directory / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # missing or unreadable: transformers reports it, without running anything
        if isinstance(data, dict) and data.get("auto_map"):
            return str(directory / name)
    return None


def check_remote_code(path: str | os.PathLike, trust_remote_code: bool,
                      setting: str = "trust_remote_code", base_path: str | os.PathLike | None = None) -> Path | None:
    """Refuse an export that ships its own code (in its folder, its base or its tokenizer) unless the user turned
    `setting` on in the config of the stage they run; called before any transformers call could import that code.
    Also the early check that a LoRA export's base is where the stage expects it (`base_path`); returns that base
    (a folder or a hub id; None for a full export)."""
    path = Path(path)
    meta = read_export_meta(path)
    base = _base_path(path, meta, base_path, setting.replace("trust_remote_code", "base_path"))
    for directory in (path, base) if not trust_remote_code else ():
        found = directory is not None and declared_remote_code(directory)
        if found:
            raise InputError(f"{path}: the export ships Python code (auto_map in {found}); it runs only if you set "
                             f"{setting}: true in the stage config, after checking the code")
    return base


def _attention(meta: dict, directory: Path) -> str:
    """The kernel the model ran with in training (recorded by `save_export`; older exports: the configured one)."""
    attention = meta.get("attn_implementation") or (meta.get("model_config") or {}).get("attn_implementation", "sdpa")
    if attention not in ATTENTION_KERNELS:
        raise InputError(f"{directory}: attn_implementation {attention!r} in the export metadata is not "
                         f"one of {', '.join(ATTENTION_KERNELS)}")
    if attention == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise InputError(f"{directory}: the export was trained with flash_attention_2 and the flash-attn package is "
                         "not installed here (install it, or the logits will not reproduce with another kernel)")
    return attention


def _load_classifier(directory: Path, meta: dict, dtype: str, device_map, quantization: str,
                     own_weights: bool = True, trust_remote_code: bool = False):
    """The export's classifier through the one builder (`build_model`), for inference. `own_weights`: the folder
    holds the head (and segment embeddings) too; a LoRA base does not, the adapter brings them."""
    from arena_dist.models.build import build_model
    from arena_dist.models.config import ModelConfig
    from arena_dist.models.segments import MODULE_NAME
    from arena_dist.quiet import quiet_transformers_loading

    markers = meta.get("segment_markers") or _config_markers(directory)
    # Same attention kernel as in training, so logits reproduce exactly. trust_remote_code is the caller's: the
    # export's own metadata records the training run's, which must not decide what runs here.
    cfg = ModelConfig(name_or_path=str(directory), head=meta["head"], dtype=dtype, quantization=quantization,
                      trust_remote_code=trust_remote_code, segment_embeddings=markers is not None,
                      attn_implementation=_attention(meta, directory))
    extra = {} if device_map is None else {"device_map": device_map}
    # An MLP head's `score.*` keys do not fit the linear head transformers builds, it does not know
    # `segment_embedding.*`, and a LoRA base has neither: both are loaded right after, so transformers' "newly
    # initialized" report would be false.
    replaced_after = meta["head"] == "mlp" or markers is not None or not own_weights
    with quiet_transformers_loading(replaced_after):
        model = build_model(cfg, meta["num_labels"], meta.get("pad_token_id"), segment_markers=markers,
                            for_training=False, answer_token_ids=meta.get("answer_token_ids"), **extra)
    if own_weights and meta["head"] == "mlp":
        _load_module_weights(model.score, directory, "score.", "head")
    if own_weights and markers is not None:
        _load_module_weights(getattr(model, MODULE_NAME), directory, f"{MODULE_NAME}.", "segment embedding")
    return model


def load_export(path: str | os.PathLike, dtype: str = "float32", device_map=None, quantization: str = "none",
                trust_remote_code: bool = False, base_path: str | os.PathLike | None = None):
    """-> (model in eval mode, tokenizer, meta). LoRA exports are rebuilt as base + adapter (not merged), so a
    quantised base can carry the full-precision adapter. `trust_remote_code`: from the config of the stage the user
    runs (never the export's); an export that ships code is refused without it (`check_remote_code`). `base_path`:
    where a LoRA export's base is now, when not where training found it (another machine, a moved folder)."""
    path = Path(path)
    meta = read_export_meta(path)
    check_remote_code(path, trust_remote_code, base_path=base_path)  # before transformers is even imported
    if meta["lora"]:
        from peft import PeftModel

        # The trained head and segment embeddings come back from the adapter (modules_to_save); the base only has
        # to match their shapes.
        base = _load_classifier(_base_path(path, meta, base_path), meta, dtype, device_map, quantization,
                                own_weights=False, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
    else:
        model = _load_classifier(path, meta, dtype, device_map, quantization, trust_remote_code=trust_remote_code)
    model.eval()
    return model, _tokenizer(path, trust_remote_code), meta


def _tokenizer(path: Path, trust_remote_code: bool):
    """The export's tokenizer, None when it carries none."""
    from transformers import AutoTokenizer

    if not (path / "tokenizer_config.json").exists():
        return None
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


# What builds a LoRA export's base classifier besides the base checkpoint (`_load_classifier`): exports that agree
# on all of it (and on the caller's dtype / quantization) can share one loaded base.
SHARED_BASE_META = ("head", "num_labels", "pad_token_id", "segment_markers", "answer_token_ids",
                    "attn_implementation")


def shared_base_key(path: str | os.PathLike, base_path: str | os.PathLike | None = None) -> str | None:
    """A LoRA export's base and the metadata its base classifier is built from, as one comparable string (None
    for a full export): LoRA exports with equal keys load onto one base (`load_lora_exports`)."""
    path = Path(path)
    meta = read_export_meta(path)
    base = _base_path(path, meta, base_path)
    if base is None:
        return None
    where = str(base.resolve()) if base.exists() else str(base)  # a folder by its real path; a hub id as it is
    return json.dumps([where, *(meta.get(key) for key in SHARED_BASE_META)])


def load_lora_exports(paths, dtype: str = "float32", device_map=None, quantization: str = "none",
                      trust_remote_code: bool = False, base_paths=None):
    """Several LoRA exports of one base (k-fold students, say) -> (one PeftModel, [(adapter name, tokenizer, meta)]
    in the order of `paths`). The base is loaded once and each export's adapter, trained head included
    (modules_to_save), is added under its own name; `model.set_adapter(name)` picks the one that runs. Each
    export alone would hold its own copy of the base: k copies of a 9B base do not fit a 16 GB T4.
    `base_paths`: per export, as `load_export`'s `base_path`."""
    from peft import PeftModel

    paths = [Path(p) for p in paths]
    base_paths = list(base_paths) if base_paths is not None else [None] * len(paths)
    keys = []
    for path, base_path in zip(paths, base_paths):
        check_remote_code(path, trust_remote_code, base_path=base_path)
        keys.append(shared_base_key(path, base_path))
        if keys[-1] is None:
            raise InputError(f"{path}: not a LoRA export (only adapters can share one loaded base)")
        if keys[-1] != keys[0]:
            raise InputError(f"{path}: its base model or head differs from {paths[0]}'s; they cannot share a base")
    metas = [read_export_meta(path) for path in paths]
    base = _load_classifier(_base_path(paths[0], metas[0], base_paths[0]), metas[0], dtype, device_map,
                            quantization, own_weights=False, trust_remote_code=trust_remote_code)
    names = [f"export{i}" for i in range(len(paths))]
    model = PeftModel.from_pretrained(base, str(paths[0]), adapter_name=names[0], is_trainable=False)
    for name, path in zip(names[1:], paths[1:]):
        model.load_adapter(str(path), adapter_name=name, is_trainable=False)
    model.eval()
    return model, [(name, _tokenizer(path, trust_remote_code), meta) for name, path, meta in zip(names, paths, metas)]
