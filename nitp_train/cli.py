"""nitp-train: presets, FLOPs accounting, and paired NTP/NITP training runs."""

from __future__ import annotations

import json
import os

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
    seq_len: int = typer.Option(None, help="Context length for the attention term [default: the preset's]."),
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

_STEPS = typer.Option(None, help="Optimiser steps [default: the preset's].")
_SAVE = typer.Option(None, "--save-every", help="Checkpoint every N steps (and at the end) [default: the preset's].")
_SEED = typer.Option(None, help="Seed of the backbone init and the data order [default: 1234].")
_CONFIG = typer.Option(None, "--config", help="YAML file of config fields (see docs/training.md).")
_SET = typer.Option(None, "--set", help="Any config field, repeatable: --set objective.lambda=0.8")
_DATA = typer.Option(None, help="Text/jsonl/parquet files, glob, dir, or HF dataset id [default: built-in corpus].")
_PRESET = typer.Option(None, help="Model preset (nitp-train presets) [default: tiny-dense].")


def _config(preset, data, steps, save_every, seed, config, sets, **extra):
    from nitp_train.config import load_config

    top = {"model.preset": preset, "data.path": data, "steps": steps, "save_every": save_every, "seed": seed, **extra}
    return load_config(config, sets, **top)


@app.command()
def run(
    out: str = typer.Option(..., help="Arm dir to write, e.g. runs/x/nitp (the tokenised data goes to runs/x/data)."),
    preset: str = _PRESET,
    objective: str = typer.Option(None, help="ntp | nitp | cosine_reg [default: nitp]."),
    data: str = _DATA,
    steps: int = _STEPS,
    save_every: int = _SAVE,
    seed: int = _SEED,
    config: str = _CONFIG,
    set_: list[str] = _SET,
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    overwrite: bool = typer.Option(False, help="Delete an existing --out and start over."),
) -> None:
    """Train one arm (one process, or several under torchrun)."""
    from nitp_train.train import train

    cfg = _config(preset, data, steps, save_every, seed, config, set_, **{"objective.name": objective})
    summary = train(cfg, out, resume=resume, overwrite=overwrite)
    _print_summary(summary)


@app.command()
def pair(
    out: str = typer.Option(None, help="Pair dir [default: runs/<preset>]."),
    preset: str = _PRESET,
    data: str = _DATA,
    steps: int = _STEPS,
    save_every: int = _SAVE,
    seed: int = _SEED,
    config: str = _CONFIG,
    set_: list[str] = _SET,
    resume: bool = typer.Option(False, help="Continue both arms from their last checkpoints."),
    overwrite: bool = typer.Option(False, help="Delete an existing pair dir and start over."),
) -> None:
    """Train the NTP baseline and the NITP arm from identical weights on identical batches."""
    from nitp_train.pair import train_pair

    cfg = _config(preset, data, steps, save_every, seed, config, set_)
    result = train_pair(cfg, out or f"runs/{cfg.model.preset}", resume=resume, overwrite=overwrite)
    for summary in result["arms"].values():
        _print_summary(summary)
    if _is_main():
        typer.echo(f"paired: {result['paired']}")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # under torchrun one process reports


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
