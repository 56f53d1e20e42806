"""The README's walkthrough config ("Your own fine-tune against its base") runs as written,
its checkpoint paths pointed at the Hugging Face organism folders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from faithprobe.cli import main
from faithprobe.data.traces import write_traces
from faithprobe.organisms.task import generate

ROOT = Path(__file__).resolve().parents[1]
ORGANISMS = ROOT / "faithprobe" / "organisms"
pytestmark = pytest.mark.usefixtures("one_thread")


def _walkthrough_config() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Your own fine-tune against its base", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    return block


def test_the_walkthrough_config_runs_on_hugging_face_folders(tmp_path, capsys):
    config = _walkthrough_config()
    assert 'base = "checkpoints/base"' in config and 'sft = "checkpoints/my-finetune"' in config
    config = (config.replace('"checkpoints/base"', json.dumps(str(ORGANISMS / "base-llama")))
              .replace('"checkpoints/my-finetune"', json.dumps(str(ORGANISMS / "sft-llama")))
              .replace("max_new_tokens = 96", "max_new_tokens = 24")
              .replace("count = 20", "count = 6")
              .replace('kinds = ["metadata"]', 'kinds = ["tag"]'))  # the organisms' alphabet
    problems = [t.with_steps(()) for t in generate("id", 6, seed=21)]
    write_traces(tmp_path / "problems.jsonl", problems)
    (tmp_path / "mine.toml").write_text(config, encoding="utf-8")
    out = tmp_path / "runs" / "mine"
    assert main(["run", str(tmp_path / "mine.toml"), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["checkpoints"]) == {"base", "sft"}
    assert (out / "traces-base.jsonl").is_file() and (out / "report.html").is_file()
    assert summary["checkpoints"]["sft"]["cue_follow_rate"]["value"] >= 0.8
    assert main(["score", str(out), "--pair", "sft", "base"]) == 0
