"""Bounds on a checkpoint's sizes, checked before anything is allocated.

A config's dimensions are compared with the shapes the weights hold (read from the safetensors
header without reading a tensor), so a config asking for ``hidden_size = 10**9`` is refused in
seconds instead of allocating hundreds of gigabytes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from faithprobe.errors import FaithprobeError

__all__ = ["bound_config", "check_hf_shapes", "one_line"]


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


# Config keys that size a tensor dimension: in a native config each is at most the largest
# dimension of the weights; in a Hugging Face one (where a key may go unused, as
# intermediate_size in a MoE) they only name the culprit when the meta build is too large.
_NATIVE_SIZE_KEYS = frozenset("d_model d_mlp d_head n_heads d_vocab d_vocab_out n_ctx "
                              "n_key_value_heads".split())
_HF_SIZE_KEYS = frozenset("hidden_size n_embd d_model intermediate_size n_inner ffn_dim d_ff "
                          "vocab_size num_attention_heads n_head num_key_value_heads head_dim "
                          "moe_intermediate_size embed_dim".split())
# Keys that count modules (a meta build makes one object each): bounded before building.
_LAYER_KEYS = frozenset("n_layers num_hidden_layers n_layer num_layers".split())
_EXPERT_KEYS = frozenset("num_experts num_local_experts n_routed_experts".split())


def _int_entries(config: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(dotted name, key, value) of every integer in a config, nested objects included."""
    found, stack = [], [("", config)]
    while stack:
        prefix, obj = stack.pop()
        for key, value in obj.items():
            if isinstance(value, dict) and len(prefix) < 200:
                stack.append((f"{prefix}{key}.", value))
            elif isinstance(value, int) and not isinstance(value, bool):
                found.append((f"{prefix}{key}", key, value))
    return found


def bound_config(config: Any, shapes: dict[str, tuple[int, ...]], source: str, *,
                  native: bool) -> None:
    """Refuse a config whose sizes the weights cannot back, before anything is built: layer
    counts at most the layers the tensor names hold (``blocks.3.``, ``layers.3.``), expert
    counts at most what the weights can hold, and (native) every dimension at most the
    largest dimension of any tensor."""
    if not isinstance(config, dict):
        raise FaithprobeError("model config is not a JSON object", source=source)
    largest = max((d for shape in shapes.values() for d in shape), default=0)
    numbers = [int(n) for k in shapes for n in re.findall(r"(?:^|\.)(\d+)(?=\.)", k)]
    layers = {m.group(1) for k in shapes if (m := re.search(r"(?:^|\.)(\d+)\.", k))}
    for name, key, value in _int_entries(config):
        field = f"config.{name}" if native else name
        if native and value < 0:
            raise FaithprobeError(f"is {value}, must not be negative", source=source,
                                  field=field)
        limit = len(layers) if key in _LAYER_KEYS else largest if (
            native and key in _NATIVE_SIZE_KEYS) else max(largest, max(numbers, default=0) + 1) \
            if key in _EXPERT_KEYS else None
        if limit is not None and value > limit:
            what = f"{limit} layer(s)" if key in _LAYER_KEYS else f"no dimension over {limit}"
            raise FaithprobeError(f"config does not match its weights: it asks for {key} = "
                                  f"{value}, the weights hold {what}", source=source, field=field)


def check_hf_shapes(folder: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                     spec: str) -> None:
    """The model the config describes, built on the meta device (no memory), against the
    weights: a tensor named in both has one shape, and the config may not imply more than
    twice the parameters the weights hold. Where the meta build fails, loading says why."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    except Exception:  # noqa: BLE001 - from_pretrained will report it properly
        return
    implied = sum(p.numel() for p in model.parameters())  # tied weights counted once
    for key, param in model.state_dict().items():
        have = shapes.get(key)
        if have is not None and have != tuple(param.shape):
            raise FaithprobeError(f"config does not match its weights: {key} has shape {have}, "
                                  f"the config implies {tuple(param.shape)}", source=spec)
    stored = sum(math.prod(s) for s in shapes.values())
    if implied > 2 * stored + 1_000_000:
        largest = max((d for shape in shapes.values() for d in shape), default=0)
        culprit = next((name for name, key, value in _int_entries(config)
                        if key in _HF_SIZE_KEYS and value > largest), None)
        raise FaithprobeError(
            f"config does not match its weights: it implies {implied} parameters, the weights "
            f"hold {stored}" + (f" (no dimension over {largest})" if culprit else ""),
            source=str(folder / "config.json") if culprit else spec, field=culprit)
