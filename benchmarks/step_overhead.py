"""NITP vs NTP training-step time, and the trainer vs a bare loop, measured in one process.

    python benchmarks/step_overhead.py [--preset tiny-dense] [--steps 20] [--batch 16] [--seq-len 256]

1. NTP and NITP steps (forward, backward, clip, AdamW) on the same model init and batch,
   alternated so that machine load affects both alike; the median ratio is printed beside
   the analytic FLOPs overhead of the same config (nitp_train.flops).
2. The trainer (`nitp_train.train.train`, NTP arm, no eval/probes) against a bare loop over the
   same HF model, AdamW and batch size: median tokens/s of each.
3. With --bf16: the NITP step under bf16 autocast against fp32, alternated (docs/training.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nitp_train.config import load_config
from nitp_train.flops import flops_per_token
from nitp_train.presets import get_preset
from nitp_train.train import TrainModule, _autocast, autocast_dtype, build_model, make_optimizer, train


class _Vocab:
    """Stands in for a tokenizer where only the size and special ids matter."""

    def __init__(self, n: int):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, 0, 0, 0

    def __len__(self):
        return self.n


def step_fn(cfg, vocab):
    model, objective = build_model(cfg, vocab)
    module = TrainModule(model, objective).train()
    opt, sched = make_optimizer(cfg, module)
    params = [p for p in module.parameters()]

    cpu = torch.device("cpu")
    amp = autocast_dtype(cfg.precision, cpu)  # the trainer's own choice, so "fp32" here is what it runs

    def step(x):
        with _autocast(cpu, amp):
            total, _ = module(x, 0)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny-dense")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--bf16", action="store_true", help="also time the NITP step under bf16 autocast vs fp32")
    args = ap.parse_args()
    torch.manual_seed(0)
    sets = [
        f"model.preset={args.preset}",
        f"seq_len={args.seq_len}",
        f"global_batch={args.batch}",
        f"micro_batch={args.batch}",
        "precision=fp32",
        "steps=1000",
    ]
    vocab = _Vocab(args.vocab)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len))

    # 1. NITP vs NTP, alternated
    ntp = step_fn(load_config(sets=sets + ["objective.name=ntp"]), vocab)
    nitp = step_fn(load_config(sets=sets + ["objective.name=nitp"]), vocab)
    times = {"ntp": [], "nitp": []}
    for i in range(args.steps + 2):
        for name, fn in (("ntp", ntp), ("nitp", nitp)) if i % 2 == 0 else (("nitp", nitp), ("ntp", ntp)):
            t = time.perf_counter()
            fn(x)
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - t)
    ratios = [b / a for a, b in zip(times["ntp"], times["nitp"])]
    flops = flops_per_token(get_preset(args.preset), seq_len=args.seq_len, vocab_size=args.vocab)
    measured = statistics.median(ratios) - 1
    print(
        f"preset {args.preset}, batch {args.batch} x {args.seq_len}, fp32, {torch.get_num_threads()} threads, {args.steps} steps each"
    )
    print(
        f"  NTP step  {1e3 * statistics.median(times['ntp']):8.1f} ms   NITP step {1e3 * statistics.median(times['nitp']):8.1f} ms"
    )
    print(
        f"  NITP overhead measured {100 * measured:5.2f} %   analytic (exact FLOPs) {100 * flops.exact_overhead:5.2f} %"
        f"   paper formula {100 * flops.paper_overhead:5.2f} %   measured/analytic {measured / flops.exact_overhead:.2f}x"
    )

    if args.bf16:  # 3. bf16 autocast vs fp32, same model init and batch, alternated
        fns = {"fp32": nitp, "bf16": step_fn(load_config(sets=sets + ["objective.name=nitp", "precision=bf16"]), vocab)}
        bt = {"fp32": [], "bf16": []}
        for i in range(args.steps + 2):
            for name in ("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32"):
                t = time.perf_counter()
                fns[name](x)
                if i >= 2:
                    bt[name].append(time.perf_counter() - t)
        f32, b16 = statistics.median(bt["fp32"]), statistics.median(bt["bf16"])
        print(
            f"  NITP step fp32 {1e3 * f32:8.1f} ms   bf16 autocast {1e3 * b16:8.1f} ms   bf16/fp32 {b16 / f32:.2f}"
            f"   (AMX tiles visible to torch: {torch.cpu._is_amx_tile_supported()})"
        )

    # 2. trainer vs a bare loop on the same model and batch size
    model, _ = build_model(load_config(sets=sets + ["objective.name=ntp"]), vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    bare = []
    for i in range(args.steps + 2):
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            bare.append(args.batch * args.seq_len / (time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            sets=sets
            + [
                "objective.name=ntp",
                f"steps={args.steps + 2}",
                f"save_every={10**6}",
                "eval_every=0",
                "probe_every=0",
                f"data.tokenizer=train:{args.vocab}",
            ]
        )
        cfg.save_every = args.steps + 2
        train(cfg, Path(tmp) / "ntp", progress=False)
        import json

        records = [json.loads(line) for line in (Path(tmp) / "ntp" / "metrics.jsonl").read_text().splitlines()]
    ours = statistics.median(r["tokens_per_s"] for r in records[2:])
    print(
        f"  trainer {ours:8.0f} tokens/s   bare loop {statistics.median(bare):8.0f} tokens/s   "
        f"trainer/bare {ours / statistics.median(bare):.2f}"
    )


if __name__ == "__main__":
    main()
