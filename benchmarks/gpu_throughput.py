"""Throughput table on one device: tokens/s, achieved FLOP/s, MFU and the NITP overhead, compile on and off.

    python benchmarks/gpu_throughput.py [--out DIR] [--steps 20] [--device cuda]
    python benchmarks/gpu_throughput.py --device cpu --quick        # a CPU smoke run of the same code (tests)

For each model (dense-125m, ~114M parameters with a 50,257-token vocabulary; a small MoE from tiny-moe's
architecture) x compile off/on x NTP/NITP, it times the trainer's own step (its module built on the
meta device and initialised from the seed, fused AdamW, clip, autocast as `precision=auto` chooses)
on random tokens, NTP and NITP alternated, the device synchronised around each timed block (data
loading is not included). MFU = achieved FLOP/s (Appendix G FLOPs of the exact config x tokens/s)
over the device's peak (nitp_train.throughput); torchtitan's convention (attention over all T keys, no
causal halving) beside it. Writes throughput.json (dated, with the device) and throughput.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nitp_train.config import load_config  # noqa: E402
from nitp_train.distributed import autocast, autocast_dtype, compile_layers, configure_kernels  # noqa: E402
from nitp_train.flops import flops_per_token  # noqa: E402
from nitp_train.model import (  # noqa: E402
    SizedVocab,
    build_meta_module,
    hf_config,
    make_optimizer,
    materialise,
    resolved_preset,
)
from nitp_train.throughput import device_peak  # noqa: E402

MODELS = {
    "dense-125m": ["model.preset=dense-125m"],
    "moe-small": ["model.preset=tiny-moe", "model.hf_overrides.hidden_size=512", "model.hf_overrides.num_hidden_layers=8",
                  "model.hf_overrides.num_attention_heads=8", "model.hf_overrides.num_key_value_heads=4",
                  "model.hf_overrides.intermediate_size=1536", "model.hf_overrides.moe_intermediate_size=512",
                  "model.hf_overrides.shared_expert_intermediate_size=512", "model.hf_overrides.num_experts=16",
                  "model.hf_overrides.max_position_embeddings=2048", "objective.target_layer=2"],
}  # fmt: skip
QUICK = ["model.hf_overrides.hidden_size=64", "model.hf_overrides.num_hidden_layers=2", "model.hf_overrides.num_attention_heads=2",
         "model.hf_overrides.num_key_value_heads=1", "model.hf_overrides.intermediate_size=128",
         "model.hf_overrides.moe_intermediate_size=64", "model.hf_overrides.shared_expert_intermediate_size=64",
         "objective.target_layer=1"]  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_fn(cfg, vocab: int, device: torch.device):
    config = hf_config(cfg, SizedVocab(vocab))
    module = build_meta_module(cfg, config)
    compile_layers(module, cfg)
    materialise(module, cfg, config, device)
    opt, _ = make_optimizer(cfg, module, device)
    params = list(module.parameters())
    amp = autocast_dtype(cfg.precision, device)

    def step(x):
        with autocast(device, amp):
            total, _ = module(x, 1)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, amp


def measure(model: str, sets: list[str], compiled: bool, args, device: torch.device, peak: float | None) -> dict:
    base = [*sets, f"micro_batch={args.batch}", f"global_batch={args.batch}", f"seq_len={args.seq_len}",
            f"compile={str(compiled).lower()}", "optim.warmup_steps=0", "steps=100"]  # fmt: skip
    fns, amp = {}, None
    for objective in ("ntp", "nitp"):
        fns[objective], amp = step_fn(load_config(sets=[*base, f"objective.name={objective}"]), args.vocab, device)
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    times = {k: [] for k in fns}
    for i in range(args.warmup + args.steps):  # alternated, so that load and clocks affect both alike
        for name in ("ntp", "nitp") if i % 2 == 0 else ("nitp", "ntp"):
            _sync(device)
            t0 = time.perf_counter()
            fns[name](x)
            _sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    cfg = load_config(sets=base)
    flops = flops_per_token(resolved_preset(cfg, args.vocab), seq_len=args.seq_len)
    tokens = args.batch * args.seq_len
    ntp_s, nitp_s = statistics.median(times["ntp"]), statistics.median(times["nitp"])
    row = {"model": model, "compile": compiled, "precision": str(amp).replace("torch.", "") if amp else "fp32",
           "batch": f"{args.batch} x {args.seq_len}", "ntp_tokens_per_s": tokens / ntp_s, "nitp_tokens_per_s": tokens / nitp_s,
           "nitp_overhead_measured": nitp_s / ntp_s - 1, "nitp_overhead_analytic": flops.exact_overhead}  # fmt: skip
    achieved = tokens / nitp_s * (flops.exact_baseline + flops.exact_nitp_extra)
    torchtitan = tokens / nitp_s * (flops.torchtitan_baseline + flops.exact_nitp_extra)  # all T keys per query
    row.update(nitp_flops_per_s=achieved, mfu=achieved / peak if peak else None,
               mfu_torchtitan=torchtitan / peak if peak else None)  # fmt: skip
    return row


def markdown(rows: list[dict], peak_source: str) -> str:
    lines = [f"peak: {peak_source}", "",
             "| model | compile | precision | batch | NTP tokens/s | NITP tokens/s | NITP overhead measured / analytic | NITP TFLOP/s | MFU (ours / torchtitan's) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} % / {100 * r['mfu_torchtitan']:.1f} %" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['model']} | {'on' if r['compile'] else 'off'} | {r['precision']} | {r['batch']} | "
                     f"{r['ntp_tokens_per_s']:,.0f} | {r['nitp_tokens_per_s']:,.0f} | {100 * r['nitp_overhead_measured']:.2f} % / "
                     f"{100 * r['nitp_overhead_analytic']:.2f} % | {r['nitp_flops_per_s'] / 1e12:.1f} | {mfu} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 steps, eager only: a smoke run of this script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible to torch (this table is measured on a GPU; --device cpu for a smoke run)")
    if args.quick:
        args.steps, args.warmup, args.batch, args.seq_len, args.vocab = 2, 1, 2, 32, 512
    device = torch.device(args.device)
    configure_kernels(load_config())
    peak, source = device_peak(device)
    rows = []
    for model, sets in MODELS.items():
        for compiled in (False,) if args.quick else (False, True):
            rows.append(measure(model, [*sets, *(QUICK if args.quick else [])], compiled, args, device, peak))
            print(markdown(rows[-1:], source).splitlines()[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "peak_source": source, "peak_flops": peak,
              "flop_convention": "mfu: Appendix G exact count, causal attention ((T+1)/2 keys per query); "
                                 "mfu_torchtitan: torchtitan's (all T keys)", "rows": rows}  # fmt: skip
    (out / "throughput.json").write_text(json.dumps(record, indent=2))
    (out / "throughput.md").write_text(markdown(rows, source))
    print(markdown(rows, source))


if __name__ == "__main__":
    main()
