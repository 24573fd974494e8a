"""What the loop records, read on the host once per logged step, and how long each part of the run took.

The loop hands each step's losses and gradient norm over as device tensors; nothing is read until a
logged step (every `log_every` steps, evaluations, saves and the last step), where one host read
(`tolist`) fetches the logged step's values and the finiteness flags of every step since the last
one. A non-finite step has already been skipped on the device (fused AdamW's `found_inf`); here it is
counted (`skipped_steps`, `skipped_total` in metrics.jsonl) and announced in one line, and only
`max_consecutive_skips` of them in a row end the run.

Time is split as torchtitan splits it: evaluation, probes, saves, exports and the first step of a
process (compile, kernel selection, allocator warm-up) each have their own timer; compute time is the
wall time between two logged steps less those. tokens/s and MFU come from compute time; the
end-to-end figures (`*_e2e`) beside them from the wall time.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from nitp_train.errors import UserError


class StepLog:
    def __init__(self, out: Path, cfg, dist, flops: dict, peak: float | None, start: int, bar=None):
        """`flops`: per token, {"ours": Appendix G exact count, "torchtitan": torchtitan's convention} (rank 0)."""
        self.out, self.cfg, self.dist, self.bar = out, cfg, dist, bar
        self.flops, self.peak = flops, peak
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, [bad, loss_total, grad_norm]) since the last read
        self.last: dict = {}
        self.t_start = self.t_last = time.perf_counter()
        self.steps_since = 0
        self.spans: dict[str, float] = {}  # seconds per timer since the last logged step
        self.skipped_total = self.in_a_row = 0
        self.tb = None
        if cfg.log.tensorboard and dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"), purge_step=start + 1)  # a resume replaces what it redoes

    @contextlib.contextmanager
    def timer(self, name: str | None):
        """Time a part of the run apart from compute (None: untimed). On a GPU the device is synchronised at
        both ends, so queued compute is not billed to it: these parts are rare (evaluations, saves)."""
        if name is None:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.spans[name] = self.spans.get(name, 0.0) + time.perf_counter() - t0

    def _sync(self) -> None:
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)

    def step(self, done: int, stats: dict[str, torch.Tensor], grad_norm: torch.Tensor, bad: torch.Tensor) -> None:
        """`bad`: the step's non-finite flag reduced over ranks, so that every rank counts it alike."""
        self.pending.append((done, torch.stack([bad.float(), stats["loss_total"].float(), grad_norm.float()])))
        self.stats, self.grad_norm = stats, grad_norm
        self.steps_since += 1
        if self.bar is not None:
            self.bar.update(1)

    def flush(
        self, done: int, lr: float, extra: dict[str, torch.Tensor] | None = None, values: dict | None = None
    ) -> dict:
        """The logged step's record, after one host read; raises after max_consecutive_skips skipped steps."""
        keys = sorted(self.stats)
        extra = extra or {}
        local = torch.stack([self.stats[k] for k in keys])
        means = self.dist.all_reduce_sum(local) / self.dist.world  # each rank's micro-batches: the mean over ranks
        flat = torch.cat([means, *(p for _, p in self.pending), self.grad_norm.reshape(1).float(),
                          *(v.reshape(1).float() for v in extra.values())])  # fmt: skip
        host = flat.tolist()  # the one host read of these steps (a CPU-GPU sync point)
        k, n = len(keys), len(self.pending)
        skipped = self._count_skips(host[k : k + 3 * n])
        record = {"step": done, "tokens": done * self.cfg.tokens_per_step, "lr": lr, **dict(zip(keys, host[:k])),
                  "grad_norm": host[k + 3 * n], **dict(zip(extra, host[k + 3 * n + 1 :])), **(values or {}),
                  "skipped_steps": skipped, "skipped_total": self.skipped_total, **self._throughput()}  # fmt: skip
        record = {key: (None if isinstance(v, float) and not _finite(v) else v) for key, v in record.items()}
        if self.dist.is_main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                for key, v in record.items():
                    if key != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(key, v, done)
            if self.bar is not None and record.get("loss_ntp") is not None:
                postfix = {"loss": f"{record['loss_ntp']:.3f}"}
                if record.get("loss_nitp") is not None:
                    postfix["nitp"] = f"{record['loss_nitp']:.3f}"
                self.bar.set_postfix(postfix)
        self.last = record
        return record

    def _throughput(self) -> dict:
        """Since the last logged step: compute time (wall time less the timed parts), and rates from it."""
        now = time.perf_counter()
        wall, spans = now - self.t_last, self.spans
        compute = max(wall - sum(spans.values()), 1e-9)
        compute_steps = self.steps_since - (1 if "first_step" in spans else 0)  # its time is not compute
        tokens, tokens_e2e = compute_steps * self.cfg.tokens_per_step, self.steps_since * self.cfg.tokens_per_step
        self.t_last, self.steps_since, self.spans = now, 0, {}

        def per_device(tok: float, seconds: float, convention: str) -> float | None:
            per_token = self.flops.get(convention)  # None in a run begun before this convention was recorded
            return tok / seconds * per_token / self.dist.world if tok and per_token else None

        def mfu(flops_per_s: float | None) -> float | None:
            return flops_per_s / self.peak if flops_per_s is not None and self.peak else None

        flops_per_s = per_device(tokens, compute, "ours")
        flops_per_s_e2e = per_device(tokens_e2e, wall, "ours")
        return {
            "tokens_per_s": tokens / compute if compute_steps else None,  # None: only the first step since the last
            "flops_per_s": flops_per_s,
            "mfu": mfu(flops_per_s),  # Appendix G exact count (causal attention: (T+1)/2 keys per query)
            "mfu_torchtitan": mfu(per_device(tokens, compute, "torchtitan")),  # all T keys per query
            "tokens_per_s_e2e": tokens_e2e / wall,
            "mfu_e2e": mfu(flops_per_s_e2e),
            "time_s": {"compute": compute, **spans, "wall": wall},
            "elapsed_s": now - self.t_start,
        }

    def _count_skips(self, flags: list[float]) -> int:
        """Skipped steps among those since the last read; raises once max_consecutive_skips are in a row."""
        skipped = 0
        for i, (step, _) in enumerate(self.pending):
            bad, loss, norm = flags[3 * i : 3 * i + 3]
            if not bad:
                self.in_a_row = 0
                continue
            skipped += 1
            self.skipped_total += 1
            self.in_a_row += 1
            # this rank's values say which, where it saw it
            what = (
                f"loss ({loss})"
                if not _finite(loss)
                else "gradient norm"
                if not _finite(norm)
                else "loss on another rank"
            )
            if self.in_a_row >= self.cfg.max_consecutive_skips:
                raise NonFinite(what, step, self.in_a_row)
            if self.dist.is_main:
                line = (f"warning: non-finite {what} at step {step}: its update was skipped ({self.in_a_row} in a "
                        f"row; {self.cfg.max_consecutive_skips} end the run)")  # fmt: skip
                self.bar.write(line, file=sys.stderr) if self.bar is not None else print(line, file=sys.stderr)
        self.pending.clear()
        return skipped

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


class NonFinite(UserError):
    def __init__(self, what: str, step: int, limit: int):
        self.what, self.step, self.limit = what, step, limit
        super().__init__(f"{limit} non-finite step(s) in a row, the last at step {step} (non-finite {what})")


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")
