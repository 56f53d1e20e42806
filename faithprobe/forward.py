"""Forward passes over padded batches, and batched greedy or seeded generation.

Used to let a model regenerate the steps after an edited one, and to have each checkpoint write
its own chain of thought. Sequences are left-padded so every row's next token is read at the
last position; the attention mask keeps padding out of every forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from faithprobe.checkpoints import Checkpoint

__all__ = ["forward_logprobs", "generate"]


def _pad(
    seqs: Sequence[Sequence[int]], pad_id: int, side: str
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], list[int]]:
    """Pad to one length; returns ids, attention mask and each sequence's offset."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, s in enumerate(seqs):
        off = width - len(s) if side == "left" else 0
        ids[row, off : off + len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, off : off + len(s)] = 1
        offsets.append(off)
    return ids, mask, offsets


@torch.no_grad()
def forward_logprobs(
    ckpt: Checkpoint,
    seqs: Sequence[Sequence[int]],
    reads: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    padding_side: str = "right",
) -> list[Float[Tensor, "n_read vocab"]]:
    """Log-softmax of the logits at positions ``reads[k]`` of sequence ``k`` (unpadded index)."""
    out: list[Tensor] = []
    device = ckpt.device
    for lo in range(0, len(seqs), batch_size):
        chunk = seqs[lo : lo + batch_size]
        ids, mask, offsets = _pad(chunk, ckpt.tokenizer.pad_token_id, padding_side)
        logits = ckpt.bridge(ids.to(device), attention_mask=mask.to(device))
        for row, off in enumerate(offsets):
            pos = torch.tensor([off + p for p in reads[lo + row]], dtype=torch.long)
            out.append(torch.log_softmax(logits[row, pos.to(device)].float(), dim=-1).cpu())
    return out


@torch.no_grad()
def generate(
    ckpt: Checkpoint,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    return_logprob: bool = False,
) -> list[tuple]:
    """Continue each prompt; returns (text up to the first stop string, whether it stopped).

    With ``return_logprob`` each tuple also holds the summed log-probability of the tokens
    kept. ``temperature == 0`` is greedy; above 0 samples with a seeded generator. A row stops at
    the end-of-sequence token, at a stop string (cut from the text), or at ``max_new_tokens``
    (``stopped`` false: the generation never reached its end), or at the model's context.
    """
    gen = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in prompts]
    texts = ["" for _ in prompts]
    logps = [0.0 for _ in prompts]
    stopped = [False for _ in prompts]
    live = list(range(len(prompts)))
    eos = ckpt.tokenizer.eos_token_id
    for _ in range(max_new_tokens):
        live = [i for i in live if not stopped[i] and len(prompts[i]) + len(out[i]) < ckpt.n_ctx]
        if not live:
            break
        seqs = [list(prompts[i]) + out[i] for i in live]
        lps = forward_logprobs(ckpt, seqs, [[len(s) - 1] for s in seqs], batch_size=batch_size,
                               padding_side="left")
        for i, lp in zip(live, lps):
            row = lp[0]
            if temperature > 0:
                probs = torch.softmax(row / temperature, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=gen))
            else:
                tok = int(torch.argmax(row))
            if eos is not None and tok == eos:
                stopped[i] = True
                continue
            out[i].append(tok)
            logps[i] += float(row[tok])
            texts[i] = ckpt.tokenizer.decode(out[i])
            for s in stop:
                at = texts[i].find(s)
                if s and at >= 0:
                    texts[i] = texts[i][:at]
                    stopped[i] = True
                    break
    if return_logprob:
        return list(zip(texts, stopped, logps))
    return list(zip(texts, stopped))
