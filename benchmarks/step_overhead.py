"""NITP vs NTP training-step time, the trainer vs a bare loop, compile on vs off and bf16 vs fp32, in one run.

    python benchmarks/step_overhead.py [--preset tiny-dense] [--steps 20] [--batch 16] [--seq-len 256] [--bf16]

1. NTP and NITP steps (forward, backward, clip, fused AdamW) on the same model init and batch,
   alternated so that machine load affects both alike; the median ratio is printed beside
   the analytic FLOPs overhead of the same config (nitp_train.flops).
2. The trainer (`nitp_train.train.train`, NTP arm, no eval/probes) against a bare nanoGPT-style loop
   over the same HF model, AdamW and batch size (timed before and after the trainer): median tokens/s.
3. The NITP step with every decoder layer compiled (compile=true) against eager, alternated.
4. With --bf16: the NITP step under bf16 autocast against fp32, alternated (docs/training.md).

Sections 2-3 run at the trainer's `precision=auto` dtype; 1 and 4 say theirs. The OpenMP wait policy and
the host allocator are the trainer's (OMP_WAIT_POLICY=PASSIVE unless the environment sets it;
release_host_memory=auto, which benchmarks/host_allocator.py measures). The trainer against this CPU's
matmul roofline: benchmarks/roofline.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as nitp-train runs (nitp_train/cli.py): before torch loads

import torch  # noqa: E402

from nitp_train.config import load_config  # noqa: E402
from nitp_train.distributed import (  # noqa: E402
    autocast,
    autocast_dtype,
    compile_layers,
    release_host_memory,
    resolve_precision,
)
from nitp_train.flops import flops_per_token  # noqa: E402
from nitp_train.model import (  # noqa: E402
    SizedVocab,
    build_meta_module,
    hf_config,
    make_optimizer,
    materialise,
    resolved_preset,
)  # fmt: skip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import record  # noqa: E402
from roofline import emulated_bf16, trainer_records  # noqa: E402

CPU = torch.device("cpu")


def build(cfg, vocab):
    """The trainer's own module (meta build, seeded init, compiled layers if asked) and its fused AdamW."""
    config = hf_config(cfg, vocab)
    module = build_meta_module(cfg, config)
    compile_layers(module, cfg)
    materialise(module, cfg, config, CPU)
    return module.train(), *make_optimizer(cfg, module, CPU)


def step_fn(cfg, vocab):
    module, opt, sched = build(cfg, vocab)
    params = [p for p in module.parameters()]
    amp = autocast_dtype(cfg.precision, CPU)  # the trainer's own choice, so "fp32" here is what it runs

    def step(x):
        with autocast(CPU, amp):
            total, _ = module(x, 0)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def alternate(fns: dict, x, steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Step times of each function, run in alternating order so that machine load affects all alike."""
    times = {name: [] for name in fns}
    names = list(fns)
    for i in range(steps + warmup):
        for name in names if i % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            fns[name](x)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny-dense")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--bf16", action="store_true", help="also time the NITP step under bf16 autocast vs fp32")
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/step_overhead.json (make bench)")
    args = ap.parse_args()
    # the trainer's host-allocator setting (it lasts for the process): every part runs under it
    release_host_memory(load_config(sets=["device=cpu"]))
    torch.manual_seed(0)
    sets = [
        f"model.preset={args.preset}",
        f"seq_len={args.seq_len}",
        f"global_batch={args.batch}",
        f"micro_batch={args.batch}",
        "steps=1000",
    ]
    auto = resolve_precision("auto", CPU)  # what the trainer picks here: sections 2-4 run at it
    fp32_sets, sets = sets + ["precision=fp32"], sets + [f"precision={auto}"]
    vocab = SizedVocab(args.vocab)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len))

    # 1. NITP vs NTP, alternated
    ntp = step_fn(load_config(sets=fp32_sets + ["objective.name=ntp"]), vocab)
    nitp = step_fn(load_config(sets=fp32_sets + ["objective.name=nitp"]), vocab)
    times = alternate({"ntp": ntp, "nitp": nitp}, x, args.steps)
    ratios = [b / a for a, b in zip(times["ntp"], times["nitp"])]
    flops = flops_per_token(resolved_preset(load_config(sets=sets), args.vocab), seq_len=args.seq_len)
    measured = statistics.median(ratios) - 1
    setup = f"{args.preset}, batch {args.batch} x {args.seq_len}"
    rows = [(f"NITP step-time overhead, {setup}, fp32",
             f"measured {100 * measured:+.1f} % vs analytic (exact FLOPs) {100 * flops.exact_overhead:+.1f} %: "
             f"{measured / flops.exact_overhead:.2f}x")]  # fmt: skip
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

    # 3. compile on vs off at the trainer's dtype (the first compiled steps, which compile, are warm-up)
    eager = nitp if auto == "fp32" else step_fn(load_config(sets=sets + ["objective.name=nitp"]), vocab)
    compiled = step_fn(load_config(sets=sets + ["objective.name=nitp", "compile=true"]), vocab)
    ct = alternate({"eager": eager, "compiled": compiled}, x, args.steps, warmup=3)
    eager_ms, compiled_ms = 1e3 * statistics.median(ct["eager"]), 1e3 * statistics.median(ct["compiled"])
    print(
        f"  NITP step eager {eager_ms:8.1f} ms   compiled layers {compiled_ms:8.1f} ms   compiled/eager {compiled_ms / eager_ms:.2f}"
    )
    rows.append((f"NITP step with compile=true (each decoder layer) vs eager, {setup}, {auto}",
                 f"{compiled_ms:.0f} vs {eager_ms:.0f} ms: {compiled_ms / eager_ms:.2f}x"))  # fmt: skip

    skipped = emulated_bf16(auto) if args.bf16 else None
    if skipped:
        print(f"  {skipped}")
        rows.append((f"NITP step, bf16 autocast vs fp32, {setup}", skipped.removeprefix("bf16 skipped: ")))
    elif args.bf16:  # 4. bf16 autocast vs fp32, same model init and batch, alternated
        fns = {
            "fp32": nitp,
            "bf16": step_fn(load_config(sets=fp32_sets + ["objective.name=nitp", "precision=bf16"]), vocab),
        }
        bt = alternate(fns, x, args.steps)
        f32, b16 = statistics.median(bt["fp32"]), statistics.median(bt["bf16"])
        print(
            f"  NITP step fp32 {1e3 * f32:8.1f} ms   bf16 autocast {1e3 * b16:8.1f} ms   bf16/fp32 {b16 / f32:.2f}"
            f"   (AMX tiles visible to torch: {torch.cpu._is_amx_tile_supported()})"
        )
        rows.append((f"NITP step, bf16 autocast vs fp32, {setup}",
                     f"{1e3 * b16:.0f} vs {1e3 * f32:.0f} ms: {b16 / f32:.2f}x (AMX: {torch.cpu._is_amx_tile_supported()})"))  # fmt: skip

    # 2. trainer vs a bare loop on the same model and batch size (the bare loop timed before and after)
    model = build(load_config(sets=sets + ["objective.name=ntp"]), vocab)[0].model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    amp = autocast_dtype(auto, CPU)

    def bare_loop() -> list[float]:
        tokens_per_s = []
        for i in range(args.steps // 2 + 2):
            t = time.perf_counter()
            with autocast(CPU, amp):
                loss = model(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss.item()  # nanoGPT reads the loss each step too
            if i >= 2:
                tokens_per_s.append(args.batch * args.seq_len / (time.perf_counter() - t))
        return tokens_per_s

    bare = bare_loop()
    # a rate every step, as the bare loop reads its loss every step
    records = trainer_records(sets + [f"data.tokenizer=train:{args.vocab}"], args.steps + 2)
    bare += bare_loop()
    ours = statistics.median(r["tokens_per_s"] for r in records)
    print(
        f"  trainer {ours:8.0f} tokens/s   bare loop {statistics.median(bare):8.0f} tokens/s   "
        f"trainer/bare {ours / statistics.median(bare):.2f}"
    )
    rows.append((f"trainer vs a bare nanoGPT-style loop (same HF model, fused AdamW, batch), {setup}, {auto}",
                 f"{ours:.0f} vs {statistics.median(bare):.0f} tokens/s: {ours / statistics.median(bare):.2f}x"))  # fmt: skip
    if args.record:
        record(
            "step_overhead", f"python benchmarks/step_overhead.py --steps {args.steps}" + " --bf16" * args.bf16, rows
        )


if __name__ == "__main__":
    main()
