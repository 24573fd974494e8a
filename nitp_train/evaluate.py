"""In-training evaluation: validation cross-entropy and the geometry probes, sharded over ranks.

Both use a fixed set of held-out windows whose size is a config value (`eval_windows`, `probe_batch`),
never a function of the world size or the micro-batch, so every layout measures the same thing.
Every rank makes the same number of forward calls (FSDP gathers parameters inside each call): a rank
whose share has run out repeats a window with weight 0.
"""

from __future__ import annotations

import math

import torch

from nitp_train.distributed import Dist, autocast
from nitp_train.loss import causal_lm_loss
from nitp_train.metrics import probe_metrics
from nitp_train.model import causal_masks


@torch.no_grad()
def validation_ce(
    model, windows: torch.Tensor, micro_batch: int, dist: Dist, amp, ce_chunk_tokens: int = 0
) -> torch.Tensor:
    """Mean next-token CE over all validation windows (each has seq_len - 1 targets), as a device scalar.

    `ce_chunk_tokens` as in training: the head and the loss chunk by chunk (0 = the full logits).
    """
    mine = windows[dist.rank :: dist.world]
    calls = math.ceil(math.ceil(len(windows) / dist.world) / micro_batch)
    total = torch.zeros(2, dtype=torch.float64, device=dist.device)  # sum of window losses, windows
    model.eval()
    for c in range(calls):
        x = mine[c * micro_batch : (c + 1) * micro_batch]
        weight = len(x)
        if weight == 0:
            x = windows[:1]  # keeps this rank in FSDP's collectives; counted with weight 0
        x = x.to(dist.device, non_blocking=True)
        with autocast(dist.device, amp):
            loss, _ = causal_lm_loss(
                model, x, ce_chunk_tokens, attention_mask=causal_masks(model.config), use_cache=False
            )
        total += torch.stack([loss.double() * weight, loss.new_tensor(weight, dtype=torch.float64)])
    model.train()
    dist.all_reduce_sum(total)
    return total[0] / total[1]


@torch.no_grad()
def geometry_probe(model, windows: torch.Tensor, dist: Dist, amp) -> dict:
    """Effective rank and mean cross-sequence cosine of last-layer states on the probe batch (paper App. D).

    Each rank runs a contiguous share of the windows; rank 0 gathers the states and computes the
    metrics (the other ranks return {}): `probe_erank`, `probe_cosine` and the massive-activation
    diagnostics of nitp_train.metrics.probe_metrics as `probe_<key>`.
    """
    per = math.ceil(len(windows) / dist.world)
    counts = [len(windows[r * per : (r + 1) * per]) for r in range(dist.world)]
    mine = windows[dist.rank * per : (dist.rank + 1) * per]
    x = (mine if len(mine) else windows[:1]).to(dist.device, non_blocking=True)
    model.eval()
    with autocast(dist.device, amp):
        # the states only: logits_to_keep=1 gives the head one position, not [tokens, vocab]
        out = model(input_ids=x, attention_mask=causal_masks(model.config), use_cache=False, output_hidden_states=True,
                    logits_to_keep=1)  # fmt: skip
        h = out.hidden_states[-1].float()
    model.train()
    if dist.world > 1:
        padded = h.new_zeros((per, *h.shape[1:]))
        padded[: counts[dist.rank]] = h[: counts[dist.rank]]
        parts = [torch.empty_like(padded) for _ in range(dist.world)]
        torch.distributed.all_gather(parts, padded)
        h = torch.cat([p[:n] for p, n in zip(parts, counts)])
    if not dist.is_main:
        return {}
    m = probe_metrics(h, None)  # content tokens: position 0 (an attention sink in real LLMs) left out
    record = {"probe_erank": float(m["erank_cov"]), "probe_cosine": float(m["anisotropy"])}
    for key in PROBE_DIAGNOSTICS:  # how concentrated the token norms are (massive activations)
        record[f"probe_{key}"] = float(m[key])
    return record


PROBE_DIAGNOSTICS = ("norm_median", "norm_max", "top1pct_share", "outliers", "excluded_norm_median")
