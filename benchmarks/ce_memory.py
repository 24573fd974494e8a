"""Peak memory of real training steps with and without the chunked cross-entropy, at Qwen2's vocabulary.

    python benchmarks/ce_memory.py [--record] [--tokenizer DIR] [--set key=value ...]

A small dense Qwen2 (d 256, 4 layers) with the vocabulary of the Qwen2 tokenizer (151,646 tokens), one
micro-batch of 2 x 1024 tokens, fp32 on CPU: the trainer's own module and AdamW, two optimiser steps
under torch's MemTracker (benchmarks/memory_plan.py's `measure`), once with `ce_chunk_tokens=0` (HF's
loss over the full [tokens, vocab] logits) and once per chunk size; each beside `nitp-train plan`'s
total for the same config. Each configuration runs in its own process, so no peak carries over.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

SMALL = ["model.hf_overrides.hidden_size=256", "model.hf_overrides.num_hidden_layers=4",
         "model.hf_overrides.num_attention_heads=4", "model.hf_overrides.num_key_value_heads=2",
         "model.hf_overrides.intermediate_size=768", "model.hf_overrides.max_position_embeddings=1024",
         "objective.name=ntp", "seq_len=1024", "micro_batch=2", "global_batch=2"]  # fmt: skip
CHUNKS = (0, 1024, 256)  # 0 = the full logits; 1024 = the default
TOKENIZER = HERE.parent.parent / "shared" / "data" / "tokenizers" / "qwen2"


def vocab_size(tokenizer: str | Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=str(TOKENIZER), help="HF tokenizer dir whose size is the vocabulary")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config field, e.g. micro_batch=4")
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/ce_memory.json (make bench)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure this chunk size and print JSON
    args = ap.parse_args()
    vocab = vocab_size(args.tokenizer)
    if args.one is not None:
        from memory_plan import measure

        print(json.dumps(measure([*SMALL, *args.sets, f"ce_chunk_tokens={args.one}"], vocab)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    results = {}
    for chunk in CHUNKS:
        cmd = [sys.executable, __file__, "--one", str(chunk), "--tokenizer", args.tokenizer]
        cmd += [a for s in args.sets for a in ("--set", s)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode:
            sys.exit(f"ce_chunk_tokens={chunk} failed:\n{res.stderr[-2000:]}")
        results[chunk] = json.loads(res.stdout.strip().splitlines()[-1])
    full = results[0]["measured_bytes"]
    setup = f"d 256, 4 layers, vocabulary {vocab:,} (Qwen2 tokenizer), 2 x 1024 tokens, fp32 CPU"
    rows = []
    for chunk, r in results.items():
        name = "full logits (ce_chunk_tokens=0)" if chunk == 0 else f"chunked, ce_chunk_tokens={chunk}"
        print(f"{name:36} measured {r['measured_bytes'] / 1e6:8.0f} MB ({r['measured_bytes'] / full:.2f} of full)  "
              f"planned {r['planned_bytes'] / 1e6:8.0f} MB  planned/measured {r['ratio']:.2f}")  # fmt: skip
        rows.append((f"peak memory of a training step (MemTracker), {name}, {setup}",
                     f"{r['measured_bytes'] / 1e6:.0f} MB ({r['measured_bytes'] / full:.2f}x the full-logits peak); "
                     f"`nitp-train plan` says {r['planned_bytes'] / 1e6:.0f} MB ({r['ratio']:.2f}x)"))  # fmt: skip
    if args.record:
        from results import record

        record("ce_memory", "python benchmarks/ce_memory.py", rows)


if __name__ == "__main__":
    main()
