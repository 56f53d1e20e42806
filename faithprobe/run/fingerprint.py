"""What a run's records are computed from, fingerprinted: the traces, each checkpoint, faithprobe.

The header's ``inputs`` holds:

- ``faithprobe``: the package version;
- ``traces``: the SHA-256 of the traces as loaded (the whole list, before a shard's slice, so
  the shards of a study agree), and for a trace file its path and the SHA-256 of its bytes;
- ``checkpoints`` (per label) and ``roles`` (the fixed InfoGain ``scorer``): the SHA-256 of each
  file the checkpoint is read from (a local folder's or file's weights, tokenizer and configs, a
  shipped organism's folder), or of its state dict where no local file holds it (a hub name, a
  packaged model, a LoRA merged into a hub base), and of its tokenizer as loaded;
- ``generated``: per label, the SHA-256 of the ``traces-<label>.jsonl`` the run wrote.

``--resume`` compares them with what it loads (:func:`compare_inputs`) and refuses, naming what
changed. A file is hashed once per process, however many labels name it (cached on its path,
size, modification time and inode).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from faithprobe.errors import FaithprobeError

__all__ = ["checkpoint_fingerprint", "compare_inputs", "file_sha256", "package_version",
           "traces_fingerprint"]

_CHUNK = 8 * 2**20
_HASHED: dict[tuple, str] = {}  # (path, size, mtime_ns, inode, device) -> sha256
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def package_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("faithprobe")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read once per process while the file is unchanged."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                h.update(chunk)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def _json_sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def traces_fingerprint(data: Mapping[str, Any], traces: list[Any]) -> dict[str, Any]:
    """The traces a run reads (all of them, before a shard's slice): their SHA-256 as loaded
    and, for a trace file, its path and the SHA-256 of its bytes."""
    out: dict[str, Any] = {"source": data["source"], "count": len(traces),
                           "sha256": _json_sha256([t.to_json() for t in traces])}
    if data["source"] == "jsonl":
        out.update(file=str(data["path"]), file_sha256=file_sha256(data["path"]))
    return out


def _files_of(spec: str) -> list[Path] | None:
    """The local files a spec is read from, or None where no local file holds it all."""
    from faithprobe.models.checkpoints import ORGANISM_DIR

    if spec.startswith("organism:"):
        return _folder_files(ORGANISM_DIR / spec.split(":", 1)[1])
    if spec.startswith("lora:"):
        adapter, _, base = spec[5:].partition("@")
        base_files = _files_of(base) if base else None
        if base_files is None or not Path(adapter).is_dir():
            return None
        return _folder_files(Path(adapter)) + base_files
    path = Path(spec)
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return None  # its base is named inside the adapter: hash what was loaded
        return _folder_files(path)
    if path.is_file():
        return [path, *sorted(p for p in path.parent.glob("*.json") if p.is_file())]
    return None  # a hub name or a packaged model


def _folder_files(folder: Path) -> list[Path]:
    """A checkpoint folder's files: weights, tokenizer and configs (not hidden files, not
    notes: an edited README changes no result)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() not in (".md", ".rst"))


def _state_dict_sha256(bridge: Any) -> str:
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(bridge.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tokenizer_sha256(tokenizer: Any) -> str:
    """The tokenizer as loaded: a character alphabet, or a Hugging Face vocabulary with its
    special tokens, BOS prefix and chat template."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        to_json = getattr(tokenizer, "to_json", None)
        return _json_sha256(to_json() if to_json else repr(tokenizer))
    return _json_sha256({"vocab": sorted(hf.get_vocab().items()),
                         "special": sorted(map(str, hf.all_special_tokens)),
                         "prefix": list(tokenizer.prefix_ids),
                         "chat_template": getattr(hf, "chat_template", None)})


def checkpoint_fingerprint(ckpt: Any) -> dict[str, Any]:
    """A loaded checkpoint's fingerprint: its spec, its files' SHA-256 (else its state dict's)
    and its tokenizer's."""
    out: dict[str, Any] = {"spec": ckpt.spec}
    files = _files_of(ckpt.spec)
    if files is not None:
        root = Path(ckpt.spec[5:].partition("@")[0] if ckpt.spec.startswith("lora:")
                    else ckpt.spec)
        root = root if root.is_dir() else root.parent
        out["files"] = {_relative(p, root): file_sha256(p) for p in files}
    else:
        out["state_dict"] = _state_dict_sha256(ckpt.bridge)
    out["tokenizer"] = _tokenizer_sha256(ckpt.tokenizer)
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _describe_checkpoint(before: Mapping[str, Any], after: Mapping[str, Any]) -> str | None:
    """What differs between two fingerprints of a checkpoint, in words (None: nothing)."""
    if before.get("tokenizer") != after.get("tokenizer"):
        return "its tokenizer differs"
    old, new = before.get("files"), after.get("files")
    if isinstance(old, dict) and isinstance(new, dict):
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            what = "weights" if any(k.lower().endswith(WEIGHT_SUFFIXES) for k in changed) \
                else "files"
            return f"its {what} differ ({', '.join(changed[:4])})"
        return None
    if before.get("state_dict") != after.get("state_dict") or (old is None) != (new is None):
        return "its weights differ"
    return None


def compare_inputs(before: Any, after: Mapping[str, Any], *, source: str) -> None:
    """Refuse a resume whose inputs are not those the run began with (exit 2, naming what
    changed): the package version, the traces, a checkpoint of a label or role."""
    def refuse(message: str, field: str) -> FaithprobeError:
        return FaithprobeError(f"{message} since the run began; its records would come from "
                               "two inputs: start again in another --out", source=source,
                               field=field)

    if not isinstance(before, dict):
        raise FaithprobeError("the run being resumed records no fingerprints of its inputs "
                              "(written by an older faithprobe); start again in another --out",
                              source=source, field="inputs")
    if before.get("faithprobe") != after["faithprobe"]:
        raise refuse(f"faithprobe's version changed ({before.get('faithprobe')} -> "
                     f"{after['faithprobe']})", "inputs.faithprobe")
    old, new = before.get("traces") or {}, after["traces"]
    if old.get("file_sha256") != new.get("file_sha256"):
        raise refuse(f"the trace file {new.get('file', '')} changed", "inputs.traces")
    if old.get("sha256") != new.get("sha256") or old.get("count") != new.get("count"):
        raise refuse("the traces changed", "inputs.traces")
    for group in ("checkpoints", "roles"):
        olds, news = before.get(group) or {}, after.get(group) or {}
        for name in sorted(olds.keys() | news.keys()):
            a, b = olds.get(name), news.get(name)
            if a is None or b is None:
                raise refuse(f"{group[:-1]} {name!r} was {'added' if a is None else 'removed'}",
                             f"inputs.{group}.{name}")
            why = _describe_checkpoint(a, b)
            if why is not None:
                raise refuse(f"{group[:-1]} {name!r} ({b.get('spec')}) changed: {why}",
                             f"inputs.{group}.{name}")
