"""nitp-eval geometry: effective rank, anisotropy, CKA and shallow-to-deep alignment per layer (docs/geometry.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from nitp_eval.geometry.flags import massive_flag
from nitp_eval.runs import SKIP_EXISTING_HELP
from nitp_train.errors import UserError


def command(
    paths: list[Path] = typer.Argument(
        ...,
        help="Run dir(s), arm dir(s), checkpoint dir(s), any HF model dir(s), or one states file "
        "(.npy/.pt/.safetensors holding tokens x dim or layers x tokens x dim). With --series: checkpoint "
        "dirs or quoted globs ('ckpts/step-*'); with --revisions: one hub model id.",
        show_default=False,
    ),
    series: Path = typer.Option(
        None,
        help="Treat the checkpoint dirs as the steps of one run, this dir: the step is the number each dir name "
        "ends with; results go to SERIES/eval/geometry/<name>-step-N.json and `nitp-eval report SERIES` draws "
        "their dynamics. Default: off (with --revisions: the model's name).",
        show_default=False,
    ),
    revisions: str = typer.Option(
        None,
        help="Comma-separated hub revisions of the model id given as PATH (e.g. step1000,step8000), "
        "analysed as a series (from the local HF cache when the hub is unreachable). Default: off.",
        show_default=False,
    ),
    text: str = typer.Option(
        None,
        help="Text to analyse: .txt, .jsonl[.gz] with a 'text' field, or an HF dataset id "
        "('name' or 'name:config'). Default for a run: its own tokenised validation split "
        "(provenance.json data_dir/val.bin), else config.yaml data.validation; otherwise "
        "the built-in Shakespeare validation split.",
    ),
    text_split: str = typer.Option("validation", help="Split to read when --text is an HF dataset id."),
    text_revision: str = typer.Option(
        None, help="Revision (commit, tag, branch) of an HF dataset id given as --text; recorded. Default: the latest."
    ),
    tokens: int = typer.Option(100_000, help="Tokens to analyse (the first N of the packed text)."),
    seq_len: int = typer.Option(
        None,
        help="Window length in tokens. Default: the run's seq_len, else 512 "
        "(capped by the model's max_position_embeddings).",
    ),
    batch_size: int = typer.Option(
        8,
        help="Windows per forward pass; sampled anisotropy pairs come from different "
        "windows of one batch, so at least 2.",
    ),
    layers: str = typer.Option(
        "all",
        help="hidden_states indices to report: all, last, or e.g. 0,4,-1 "
        "(0 = embeddings, last = after the final norm).",
    ),
    n_pairs: int = typer.Option(
        10_000, help="Random token pairs (from different sequences) for the sampled anisotropy."
    ),
    seed: int = typer.Option(0, help="Seed of the batch order and of the anisotropy pairs."),
    cka_matrix: bool = typer.Option(
        False,
        "--cka-matrix",
        help="Also the full layer x layer linear-CKA matrix (memory O(layers^2 dim^2)). Default: off.",
    ),
    target_layer: int = typer.Option(
        None,
        help="Layer k for cos(h_t, z_{t+1}). Default: the checkpoint's NITP projector, "
        "else the run's objective.target_layer, else ceil(0.2 L) (the trainer's default).",
    ),
    bos: bool = typer.Option(
        False,
        "--bos",
        help="Prepend the tokenizer's BOS token to every window (never counted); auto does it anyway. Default: off.",
    ),
    exclude_positions: str = typer.Option(
        "auto",
        help="Window positions left out of every statistic: auto = content tokens (a BOS is prepended and "
        "not counted where the tokenizer has one, else position 0 of every window is left out: real LLMs "
        "put a massive-norm attention sink there); none = every token (the paper's literal choice); or "
        "comma-separated positions, e.g. 0 or 0,1,-1 (negative from the window's end).",
    ),
    exclude_massive: float = typer.Option(
        None,
        help="Also leave out every token whose norm exceeds K x its batch's median norm in any reported "
        "layer (e.g. 20). Default: none left out by norm (layers where a few tokens dominate are flagged).",
        show_default=False,
    ),
    all_steps: bool = typer.Option(
        False,
        "--all-steps",
        help="Every saved checkpoint of the run (trajectories), not only the latest. Default: off (the latest).",
    ),
    out: Path = typer.Option(
        None, help="Results dir. Default: <run>/eval/geometry/ (./eval/geometry/ for a model from elsewhere)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace existing results files. Default: off (an existing file stops the command before any work).",
    ),
    skip_existing: bool = typer.Option(False, "--skip-existing", help=SKIP_EXISTING_HELP),
    device: str = typer.Option(None, help="torch device. Default: cuda if available, else cpu."),
    dtype: str = typer.Option(
        "auto", help="Weights dtype: auto (bfloat16 on a CUDA GPU, float32 on CPU), float32, bfloat16, float16."
    ),
    stats_device: str = typer.Option(
        "auto",
        help="Where the float64 statistics accumulate: auto (the model's device, but the CPU for GPUs with slow "
        "float64, i.e. other than A100/H100/H200/B200/MI250/MI300), cpu, cuda, cuda:N.",
    ),
    extra_metrics: bool = typer.Option(
        True,
        help="Also RankMe, alpha-ReQ, TwoNN, prompt and dataset entropy, curvature and the unembedding's rank and "
        "alignment (docs/geometry.md); --no-extra-metrics: only the schema-1 set.",
    ),
    alpha_range: str = typer.Option("11,100", help="Eigenvalue ranks FIRST,LAST that alpha-ReQ fits (1-based)."),
    twonn_sample: int = typer.Option(1024, help="Tokens in the seeded TwoNN subsample (the same in every layer)."),
    entropy_alpha: float = typer.Option(1.0, help="Renyi order of the prompt and dataset entropies (1 = von Neumann)."),
    prompt_sequences: int = typer.Option(
        16, help="Windows the prompt entropy averages over (the first ones in the seeded batch order)."
    ),
) -> None:
    """Per-layer geometry of hidden states, streamed over many tokens in O(layers x dim^2) memory.

    One device per process: bfloat16 weights on a CUDA GPU by default, statistics always accumulated in float64
    (--stats-device); for several GPUs, run one process per GPU over different checkpoints.
    """
    from nitp_eval.geometry.analysis import run_geometry
    from nitp_eval.geometry.estimators import MetricOptions
    from nitp_eval.geometry.settings import GeometrySettings

    metrics = MetricOptions(
        extra=extra_metrics,
        alpha_fit_range=parse_range(alpha_range),
        twonn_sample=twonn_sample,
        entropy_alpha=entropy_alpha,
        prompt_sequences=prompt_sequences,
    )
    settings = GeometrySettings(
        tokens=tokens, seq_len=seq_len, batch_size=batch_size, layers=layers, n_pairs=n_pairs, seed=seed,
        cka_matrix=cka_matrix, target_layer=target_layer, bos=bos, exclude_positions=exclude_positions,
        exclude_massive=exclude_massive, text=text, text_split=text_split, text_revision=text_revision,
        device=device, dtype=dtype, stats_device=stats_device, metrics=metrics,
    )  # fmt: skip
    written = run_geometry(
        paths, settings, series=series, revisions=revisions, all_steps=all_steps, out=out, overwrite=overwrite,
        skip_existing=skip_existing,
    )  # fmt: skip
    _finish(written)


def parse_range(spec: str) -> tuple[int, int]:
    """`11,100` -> (11, 100)."""
    try:
        lo, hi = (int(part) for part in spec.split(","))
    except ValueError:
        raise UserError(f"--alpha-range {spec!r}: give two ranks as FIRST,LAST, e.g. 11,100") from None
    return lo, hi


def _fmt(v, width=9, digits=3):
    return f"{'-':>{width}}" if v is None or v != v else f"{v:>{width}.{digits}f}"


def _finish(written) -> None:
    """A per-layer table per result, then a side-by-side summary when there are several."""
    for target, r in written:
        pl = r["per_layer"]
        typer.echo(f"\n{target.label}: {r['tokens']} tokens, dim {r['dim']}, rank cap {r['rank_cap']}  -> {r['_path']}")
        typer.echo(
            f"{'layer':>5} {'erank_cov':>9} {'erank_sv':>9} {'aniso':>9} {'aniso_ex':>9} {'cka_last':>9} {'norm':>9}"
            f" {'norm_med':>9} {'max/med':>9} {'top1%':>9}"
        )
        for i, layer in enumerate(r["layers"]):
            med, mx = pl["norm_median"][i], pl["norm_max"][i]
            ratio = mx / med if med else None
            typer.echo(
                f"{layer:>5} {_fmt(pl['erank_cov'][i], digits=1)} {_fmt(pl['erank_sv'][i], digits=1)} "
                f"{_fmt(pl['anisotropy'][i])} {_fmt(pl['anisotropy_exact'][i])} {_fmt(pl['cka_to_last'][i])} "
                f"{_fmt(pl['mean_norm'][i], digits=2)} {_fmt(med, digits=2)} {_fmt(ratio, digits=1)} "
                f"{_fmt(pl['top1pct_share'][i])}"
            )
        if "rankme" in pl:  # schema 2: the metrics beyond effective rank and anisotropy
            typer.echo(
                f"{'layer':>5} {'rankme':>9} {'alpha':>9} {'twonn':>9} {'H_prompt':>9} {'H_data':>9} {'curv':>9}"
            )
            for i, layer in enumerate(r["layers"]):
                typer.echo(
                    f"{layer:>5} {_fmt(pl['rankme'][i], digits=1)} {_fmt(pl['alpha_req'][i])} "
                    f"{_fmt(pl['twonn'][i], digits=1)} {_fmt(pl['prompt_entropy'][i])} "
                    f"{_fmt(pl['dataset_entropy'][i])} {_fmt(pl['curvature'][i])}"
                )
        u = r.get("unembedding")
        if u:
            typer.echo(
                f"unembedding {u['shape'][0]} x {u['shape'][1]}: effective rank {_fmt(u['erank'], 0, 1)}; last-layer "
                f"variance in its top {u['top_k']} directions {_fmt(u['top_k_share'], 0, 3)} "
                f"(isotropic: {u['isotropic_share']:.3f})"
            )
        a = r["alignment"]
        if a.get("target_layer") is not None:
            typer.echo(
                f"cos(h_t, layer {a['target_layer']} at t+1) = {_fmt(a['cos_next'], 0, 4)}"
                + (
                    f"; through the NITP projector, cos(P(h_t), z) = {_fmt(a['projector_cos'], 0, 4)}"
                    if a.get("projector_cos") is not None
                    else ""
                )
            )
        excluded = r["massive"]["excluded"]
        if excluded:
            typer.echo("left out of every statistic: " + ", ".join(f"{n} {why}" for why, n in excluded.items()))
        flag = massive_flag(r)
        if flag:
            typer.echo(f"note: {target.label}: {flag}", err=True)
    if len(written) > 1:
        typer.echo(
            f"\n{'target':24} {'tokens':>8} {'erank_cov':>9} {'aniso':>9} {'cos_next':>9} {'proj_cos':>9}   (erank, aniso: last reported layer)"
        )
        for target, r in written:
            pl, a = r["per_layer"], r["alignment"]
            typer.echo(
                f"{target.label:24} {r['tokens']:>8} {_fmt(pl['erank_cov'][-1], digits=1)} {_fmt(pl['anisotropy'][-1])} "
                f"{_fmt(a['cos_next'], digits=4)} {_fmt(a['projector_cos'], digits=4)}"
            )
