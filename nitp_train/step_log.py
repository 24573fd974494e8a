"""What the loop records, read on the host once per logged step.

The loop hands each step's losses and gradient norm over as device tensors; nothing is read until a
logged step (every `log_every` steps, evaluations, saves and the last step), where one host read
(`tolist`) fetches the logged step's values and the finiteness flags of every step since the last
one. A non-finite step has already been skipped on the device (fused AdamW's `found_inf`), so the
error raised then names it, and no update from it reached the weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from nitp_train.errors import UserError


class StepLog:
    def __init__(self, out: Path, cfg, dist, train_flops_per_token: float, peak: float | None, start: int, bar=None):
        self.out, self.cfg, self.dist, self.bar = out, cfg, dist, bar
        self.flops_per_token, self.peak = train_flops_per_token, peak
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, [bad, loss_total, grad_norm]) since the last read
        self.last: dict = {}
        self.t_start = self.t_last = time.perf_counter()
        self.steps_since = 0
        self.tb = None
        if cfg.log.tensorboard and dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start + 1)  # a resume replaces what it redoes

    def step(self, done: int, stats: dict[str, torch.Tensor], grad_norm: torch.Tensor, bad: torch.Tensor) -> None:
        """`bad`: the step's non-finite flag reduced over ranks, so that every rank raises at the same read."""
        self.pending.append((done, torch.stack([bad.float(), stats["loss_total"].float(), grad_norm.float()])))
        self.stats, self.grad_norm = stats, grad_norm
        self.steps_since += 1
        if self.bar is not None:
            self.bar.update(1)

    def flush(
        self, done: int, lr: float, extra: dict[str, torch.Tensor] | None = None, values: dict | None = None
    ) -> dict:
        """The logged step's record, after one host read; raises on a non-finite step since the last read."""
        keys = sorted(self.stats)
        extra = extra or {}
        local = torch.stack([self.stats[k] for k in keys])
        means = self.dist.all_reduce_sum(local) / self.dist.world  # each rank's micro-batches: the mean over ranks
        flat = torch.cat([means, *(p for _, p in self.pending), self.grad_norm.reshape(1).float(),
                          *(v.reshape(1).float() for v in extra.values())])  # fmt: skip
        host = flat.tolist()  # the one host read of these steps (a CPU-GPU sync point)
        k, n = len(keys), len(self.pending)
        self._raise_if_non_finite(host[k : k + 3 * n])
        now = time.perf_counter()
        tokens_per_s = self.steps_since * self.cfg.tokens_per_step / max(now - self.t_last, 1e-9)
        self.t_last, self.steps_since = now, 0
        per_device = tokens_per_s * self.flops_per_token / self.dist.world
        record = {"step": done, "tokens": done * self.cfg.tokens_per_step, "lr": lr, **dict(zip(keys, host[:k])),
                  "grad_norm": host[k + 3 * n], **dict(zip(extra, host[k + 3 * n + 1 :])), **(values or {}),
                  "tokens_per_s": tokens_per_s, "flops_per_s": per_device,
                  "mfu": per_device / self.peak if self.peak else None, "elapsed_s": now - self.t_start}  # fmt: skip
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for key, v in record.items():
                    if key != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(key, v, done)
            if self.bar is not None:
                postfix = {"loss": f"{record['loss_ntp']:.3f}"}
                if "loss_nitp" in record:
                    postfix["nitp"] = f"{record['loss_nitp']:.3f}"
                self.bar.set_postfix(postfix)
        self.last = record
        return record

    def _raise_if_non_finite(self, flags: list[float]) -> None:
        for i, (step, _) in enumerate(self.pending):
            bad, loss, norm = flags[3 * i : 3 * i + 3]
            if bad:  # on some rank; this rank's values say which, where it saw it
                what = (
                    f"loss ({loss})"
                    if not _finite(loss)
                    else "gradient norm"
                    if not _finite(norm)
                    else "loss on another rank"
                )
                raise NonFinite(what, step)
        self.pending.clear()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


class NonFinite(UserError):
    def __init__(self, what: str, step: int):
        self.what, self.step = what, step
        super().__init__(f"non-finite {what} at step {step}")


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
