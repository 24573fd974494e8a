"""nitp-train: presets, FLOPs accounting, and paired NTP/NITP training runs."""

from __future__ import annotations

import json
import os

# torch's OpenMP runtime (libgomp) keeps idle threads spinning; on a CPU shared with other work a spinning
# thread burns the time its descheduled peer needs, and a tiny-dense CPU step ran 3-4x slower than with
# passive waiting (docs/training.md, "Precision and threads on CPU"). libgomp reads this once, when torch is
# first imported, so it is set here, before any torch import; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from nitp_train.errors import run_cli

app = typer.Typer(
    help="Train paired NTP/NITP models; inspect presets and FLOPs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command()
def presets(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List model presets: architecture, size, total/activated parameters, NITP target layer and lambda."""
    from nitp_train.presets import get_preset, param_counts, preset_names

    rows = []
    for name in preset_names():
        p = get_preset(name)
        counts = param_counts(p)
        rows.append(
            {
                "name": name,
                "architecture": p.hf["model_type"],
                "moe": p.is_moe,
                "layers": p.num_layers,
                "hidden": p.hf["hidden_size"],
                "total_params": counts["total"],
                "activated_params": counts["activated"],
                "target_layer": p.nitp.get("target_layer"),
                "lambda": p.nitp.get("lambda"),
                "description": p.description,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"{'preset':16} {'arch':10} {'layers':>6} {'hidden':>6} {'total':>9} {'activated':>9} {'target':>7} {'lambda':>6}"
    )
    for r in rows:
        typer.echo(
            f"{r['name']:16} {r['architecture']:10} {r['layers']:>6} {r['hidden']:>6} {_human(r['total_params']):>9} "
            f"{_human(r['activated_params']):>9} {str(r['target_layer']) + '/' + str(r['layers']):>7} {r['lambda']:>6}"
        )
    typer.echo("(tiny presets counted with an 8192-token vocabulary; paper presets with the Qwen2 vocabulary)")


@app.command()
def flops(
    preset: str = typer.Option("moe-9b-a1b", help="Preset name (see `nitp-train presets`) or preset .yaml file."),
    seq_len: int = typer.Option(None, help="Context length for the attention term (default: the preset's)."),
    vocab_size: int = typer.Option(8192, help="Vocabulary size, used only when the preset does not fix one."),
    projector: str = typer.Option("swiglu", help="swiglu | linear | none"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Per-token training FLOPs (paper Appendix G and exact): NTP baseline, NITP extra, overhead."""
    from nitp_train.errors import UserError
    from nitp_train.flops import flops_per_token
    from nitp_train.objective import PROJECTORS
    from nitp_train.presets import get_preset

    if projector not in PROJECTORS:
        raise UserError(f"--projector {projector!r} is unknown; choose one of {', '.join(PROJECTORS)}")
    r = flops_per_token(get_preset(preset), seq_len=seq_len, vocab_size=vocab_size, projector=projector)
    if as_json:
        typer.echo(json.dumps(r.to_dict(), indent=2))
        return
    typer.echo(f"preset {r.preset}, per token, training (fwd + bwd), context {r.seq_len}")
    typer.echo(
        f"  paper (App. G):  NTP {r.paper_baseline:.4g}  NITP extra {r.paper_nitp_extra:.4g}  overhead {100 * r.paper_overhead:.2f} %"
    )
    typer.echo(
        f"  exact config:    NTP {r.exact_baseline:.4g}  NITP extra {r.exact_nitp_extra:.4g}  overhead {100 * r.exact_overhead:.2f} %"
    )
    for part, v in r.exact_parts.items():
        typer.echo(f"    {part:24} {v:.4g}")


# ---------------------------------------------------------------------------- training

_STEPS = typer.Option(None, help="Optimiser steps, the run's LR horizon (default: the preset's, or its tokens).")
_SAVE = typer.Option(None, "--save-every", help="Training state every N steps and at the end (default: the preset's).")
_SEED = typer.Option(None, help="Seed of the backbone init and the data order (default: 1234).")
_CONFIG = typer.Option(None, "--config", help="YAML file of config fields (see docs/training.md).")
_SET = typer.Option(None, "--set", help="Any config field, repeatable: --set objective.lambda=0.8")
_DATA = typer.Option(
    None,
    help="Token dir (nitp-train tokenize), text/jsonl/parquet files, glob, dir, or HF dataset id (default: built-in corpus).",
)
_PRESET = typer.Option(None, help="Model preset (nitp-train presets) (default: tiny-dense).")
_EXTEND = typer.Option(
    None,
    "--extend-from",
    help="Continue another run under a longer LR horizon (--steps): its arm/pair dir (its last training state before "
    "the decay) or a state dir; writes a new --out (docs/training.md, Schedule).",
)


def _config(preset, data, steps, save_every, seed, config, sets, **extra):
    from nitp_train.config import load_config

    top = {"model.preset": preset, "data.path": data, "steps": steps, "save_every": save_every, "seed": seed, **extra}
    return load_config(config, sets, **top)


@app.command()
def run(
    out: str = typer.Option(..., help="Arm dir to write, e.g. runs/x/nitp (the tokenised data goes to runs/x/data)."),
    preset: str = _PRESET,
    objective: str = typer.Option(None, help="ntp | nitp | cosine_reg (default: nitp)."),
    data: str = _DATA,
    steps: int = _STEPS,
    save_every: int = _SAVE,
    seed: int = _SEED,
    config: str = _CONFIG,
    set_: list[str] = _SET,
    resume: bool = typer.Option(False, help="Continue from the last training state in --out (any world size/layout)."),
    overwrite: bool = typer.Option(False, help="Delete an existing --out and start over."),
    extend_from: str = _EXTEND,
) -> None:
    """Train one arm (one process, or several under torchrun)."""
    from nitp_train.train import train

    cfg = _config(preset, data, steps, save_every, seed, config, set_, **{"objective.name": objective})
    summary = train(cfg, out, resume=resume, overwrite=overwrite, extend_from=extend_from)
    _print_summary(summary)


@app.command()
def pair(
    out: str = typer.Option(None, help="Pair dir (default: runs/<preset>)."),
    preset: str = _PRESET,
    data: str = _DATA,
    steps: int = _STEPS,
    save_every: int = _SAVE,
    seed: int = _SEED,
    config: str = _CONFIG,
    set_: list[str] = _SET,
    resume: bool = typer.Option(False, help="Continue both arms from their last checkpoints."),
    overwrite: bool = typer.Option(False, help="Delete an existing pair dir and start over."),
    extend_from: str = _EXTEND,
    seeds: str = typer.Option(
        None, help="One pair per seed, e.g. 0,1,2: <out>/seed-<s>/{ntp,nitp} (init and data order change per seed)."
    ),
    arms: str = typer.Option(
        None,
        help="Train only these arms of the pair, e.g. ntp (the other in another process, on another core): "
        "each arm's init and batches depend on the seed alone. Default: both.",
    ),
) -> None:
    """Train the NTP baseline and the NITP arm from identical weights on identical batches."""
    from nitp_train.errors import UserError
    from nitp_train.pair import parse_seeds, train_pair, train_study

    cfg = _config(preset, data, steps, save_every, seed, config, set_)
    out = out or f"runs/{cfg.model.preset}"
    only = None if arms is None else [a.strip() for a in arms.split(",") if a.strip()]
    if seeds is not None:
        if seed is not None or extend_from is not None:
            raise UserError("--seeds excludes --seed and --extend-from (each seed is its own pair)")
        study = train_study(cfg, out, parse_seeds(seeds), resume=resume, overwrite=overwrite, only=only)
        for result in study["seeds"].values():
            for summary in result["arms"].values():
                _print_summary(summary)
        if _is_main():
            typer.echo(f"paired: {study['paired']}")
        return
    result = train_pair(cfg, out, resume=resume, overwrite=overwrite, extend_from=extend_from, only=only)
    for summary in result["arms"].values():
        _print_summary(summary)
    if _is_main():
        typer.echo(f"paired: {result['paired']}")


@app.command()
def tokenize(
    data: str = typer.Option(..., help="Text/jsonl/parquet files, glob, dir, or HF dataset id."),
    out: str = typer.Option(..., help="Token dir to write; pass it as --data to run/pair."),
    preset: str = typer.Option("tiny-dense", help="Preset whose tokenizer is used (the one you will train)."),
    num_proc: int = typer.Option(1, help="Processes encoding documents in parallel (output identical to 1)."),
    set_: list[str] = _SET,
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
) -> None:
    """Tokenise a corpus once, in parallel, before training (train.bin, val.bin, tokenizer/, meta.json)."""
    from nitp_train.config import load_config
    from nitp_train.data import tokenize as tokenize_corpus

    cfg = load_config(None, set_, **{"model.preset": preset, "data.path": data})
    tokens = tokenize_corpus(cfg.data, out, num_proc=num_proc, overwrite=overwrite)
    m = tokens.meta
    typer.echo(
        f"{out}: {m['train_tokens']:,} train + {m['val_tokens']:,} validation tokens, vocabulary {m['vocab_size']:,}"
    )


@app.command()
def plan(
    preset: str = typer.Option("moe-9b-a1b", help="Preset name or preset .yaml file."),
    gpus: int = typer.Option(8, help="Processes (GPUs) the run is sharded over."),
    gpu_mem: float = typer.Option(80.0, help="Memory per GPU in GB (1e9 bytes)."),
    parallel: str = typer.Option(None, help="fsdp | ddp (default: the run's: the preset's, else ddp)."),
    micro_batch: int = typer.Option(
        None, help="Sequences per forward pass per GPU (default: the run's: the preset's, else the largest that fits)."
    ),
    steps: int = _STEPS,
    config: str = _CONFIG,
    set_: list[str] = _SET,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Before a run: steps, tokens, FLOPs per step, per-GPU memory and disk, with the defaults `run` resolves."""
    from nitp_train.plan import format_plan, plan_run

    # the same resolution as `run` and `pair` (_config), so the plan describes the run they would start
    cfg = _config(preset, None, steps, None, None, config, set_, parallel=parallel, micro_batch=micro_batch)
    result = plan_run(cfg, gpus=gpus, gpu_mem_gb=gpu_mem)
    typer.echo(json.dumps(result, indent=2) if as_json else format_plan(result))


def _is_main() -> bool:
    from nitp_train.launch import is_main_process

    return is_main_process()  # under torchrun one process reports


def _print_summary(summary: dict) -> None:
    if not _is_main():
        return
    last = summary["last"]
    parts = [f"{k}={last[k]:.4f}" for k in ("loss_ntp", "loss_nitp", "val_ce", "probe_erank") if k in last]
    typer.echo(f"{summary['out']}: step {summary['step']}  " + "  ".join(parts))


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
