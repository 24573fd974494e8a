"""nitp-train: presets, FLOPs accounting, and paired NTP/NITP training runs."""

from __future__ import annotations

import json

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
        rows.append({
            "name": name, "architecture": p.hf["model_type"], "moe": p.is_moe, "layers": p.num_layers,
            "hidden": p.hf["hidden_size"], "total_params": counts["total"], "activated_params": counts["activated"],
            "target_layer": p.nitp.get("target_layer"), "lambda": p.nitp.get("lambda"), "description": p.description,
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'preset':16} {'arch':10} {'layers':>6} {'hidden':>6} {'total':>9} {'activated':>9} {'target':>7} {'lambda':>6}")
    for r in rows:
        typer.echo(f"{r['name']:16} {r['architecture']:10} {r['layers']:>6} {r['hidden']:>6} {_human(r['total_params']):>9} "
                   f"{_human(r['activated_params']):>9} {str(r['target_layer']) + '/' + str(r['layers']):>7} {r['lambda']:>6}")
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
    typer.echo(f"  paper (App. G):  NTP {r.paper_baseline:.4g}  NITP extra {r.paper_nitp_extra:.4g}  overhead {100 * r.paper_overhead:.2f} %")
    typer.echo(f"  exact config:    NTP {r.exact_baseline:.4g}  NITP extra {r.exact_nitp_extra:.4g}  overhead {100 * r.exact_overhead:.2f} %")
    for part, v in r.exact_parts.items():
        typer.echo(f"    {part:24} {v:.4g}")


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def main() -> None:
    run_cli(app)


if __name__ == "__main__":
    main()
