"""Where a model's weights live and in which precision: device, dtype, device map.

Imports nothing heavy: a run config is validated with it before torch loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


from faithprobe.errors import FaithprobeError

__all__ = ["DTYPES", "Placement", "checkpoint_hardware"]


@dataclass(frozen=True)
class Placement:
    """Where a model's weights live and in which precision."""

    device: str = "cpu"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto (the checkpoint's own)
    device_map: str | None = None  # "auto": accelerate spreads a large model over the GPUs

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise FaithprobeError(f"unknown dtype (known: {', '.join(DTYPES)})",
                                  field="dtype", source=repr(self.dtype))
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(self.device)):
            raise FaithprobeError("unknown device (auto, cpu, cuda, cuda:N or mps)",
                                  field="device", source=repr(self.device))
        if self.device_map not in (None, "auto"):
            raise FaithprobeError("device_map is 'auto' or not given", field="device_map",
                                  source=repr(self.device_map))

    def on_this_machine(self) -> Placement:
        """This placement as this machine can have it: ``device_map = "auto"`` spreads a model
        over the GPUs, so without CUDA it is ignored (the model loads whole on ``device``, in
        ``dtype``; the run's header and warnings say so)."""
        import torch

        if self.device_map is not None and not torch.cuda.is_available():
            return replace(self, device_map=None)
        return self

    def torch_device(self) -> torch.device:
        """The device, with ``auto`` resolved on this machine; a missing one is an error."""
        import torch

        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            mps = getattr(torch.backends, "mps", None)
            return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise FaithprobeError("CUDA is not available on this machine", field="device",
                                  source=self.device)
        if self.device == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise FaithprobeError("MPS is not available on this machine", field="device",
                                      source=self.device)
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype | None:
        """The precision to cast to; None for ``auto`` (as the checkpoint stores it)."""
        import torch

        return None if self.dtype == "auto" else getattr(torch, self.dtype)

    def hf_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` arguments: the precision, and the device map when spreading."""
        kw: dict[str, Any] = {"dtype": "auto" if self.dtype == "auto" else self.torch_dtype()}
        if self.device_map is not None:
            kw["device_map"] = self.device_map
        return kw


DTYPES = ("float32", "bfloat16", "float16", "auto")


def checkpoint_hardware(ckpt: Any) -> dict[str, Any]:
    """Where one loaded checkpoint sits: device, dtype, and the GPU's name and memory."""
    import torch

    first = next(ckpt.bridge.parameters())
    entry = {"device": str(first.device), "dtype": str(first.dtype).replace("torch.", "")}
    if first.device.type == "cuda":
        props = torch.cuda.get_device_properties(first.device)
        entry.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return entry
