"""nitp-eval geometry: effective rank, anisotropy, CKA and shallow-to-deep alignment per layer (docs/geometry.md)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from nitp_train.errors import UserError

DEFAULT_SEQ_LEN = 512


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
    device: str = typer.Option(None, help="torch device. Default: cuda if available, else cpu."),
    dtype: str = typer.Option("float32", help="Model weights dtype (statistics are always accumulated in float64)."),
) -> None:
    """Per-layer geometry of hidden states, streamed over many tokens in O(layers x dim^2) memory."""
    from nitp_eval.geometry import extract
    from nitp_eval.runs import check_destinations, resolve_series

    if tokens < 2:
        raise UserError(f"--tokens {tokens}: too few; the statistics need at least 2 tokens (e.g. --tokens 100000)")
    if batch_size < 1 or (batch_size < 2 and n_pairs > 0):
        raise UserError(
            f"--batch-size {batch_size}: sampled anisotropy pairs come from different windows of one batch; use --batch-size 2 or more"
        )
    if n_pairs < 0:
        raise UserError(f"--n-pairs {n_pairs}: must be >= 0")
    if seq_len is not None and seq_len < 2:
        raise UserError(f"--seq-len {seq_len}: must be at least 2 (cos_next pairs t with t+1)")
    if exclude_massive is not None and not (exclude_massive > 1 and math.isfinite(exclude_massive)):
        raise UserError(
            f"--exclude-massive {exclude_massive}: must be a finite factor > 1 of the median norm (e.g. 20)"
        )
    positions_rule = extract.parse_exclude_positions(exclude_positions)
    common = {
        "tokens_requested": tokens,
        "batch_size": batch_size,
        "layers_option": layers,
        "n_pairs": n_pairs,
        "seed": seed,
        "cka_matrix": cka_matrix,
        "dtype": dtype,
        "exclude_positions_option": exclude_positions,
        "exclude_massive": exclude_massive,
    }

    path = paths[0]
    states = [p for p in paths if p.is_file() and p.suffix.lower() in extract.STATES_SUFFIXES]
    if states and (len(paths) > 1 or series is not None or revisions is not None):
        raise UserError(
            f"{states[0]}: a states file is analysed on its own; give it alone, without --series/--revisions"
        )
    if states:
        ignored = [
            name
            for name, given in (
                ("--text", text is not None),
                ("--text-split", text_split != "validation"),
                ("--seq-len", seq_len is not None),
                ("--bos", bos),
                ("--exclude-positions", exclude_positions != "auto"),
                ("--target-layer", target_layer is not None),
                ("--all-steps", all_steps),
                ("--device", device is not None),
                ("--dtype", dtype != "float32"),
            )
            if given
        ]
        _finish(
            [
                _analyse_states_file(
                    path,
                    out,
                    overwrite,
                    ignored,
                    tokens=tokens,
                    layers=layers,
                    n_pairs=n_pairs,
                    seed=seed,
                    cka_matrix=cka_matrix,
                    common=common,
                )
            ]
        )
        return

    targets = resolve_series(paths, series, revisions, all_steps)
    dests = check_destinations(targets, "geometry", out, overwrite)  # every results path, before any work
    written = []
    for target, dest in zip(targets, dests):
        written.append(
            (
                target,
                _analyse_checkpoint(
                    target,
                    dest,
                    text=text,
                    text_split=text_split,
                    tokens=tokens,
                    seq_len=seq_len,
                    batch_size=batch_size,
                    layers=layers,
                    n_pairs=n_pairs,
                    seed=seed,
                    cka_matrix=cka_matrix,
                    target_layer=target_layer,
                    bos=bos,
                    positions_rule=positions_rule,
                    exclude_massive=exclude_massive,
                    device=device,
                    dtype=dtype,
                    overwrite=overwrite,
                    common=common,
                ),
            )
        )
    _finish(written)


def _analyse_states_file(path, out, overwrite, ignored, *, tokens, layers, n_pairs, seed, cka_matrix, common):
    from nitp_eval.geometry import extract
    from nitp_eval.runs import Target, check_destinations

    target = Target(path.resolve())
    [dest] = check_destinations([target], "geometry", out, overwrite)
    notes: list[str] = []
    if ignored:
        _note(f"{path.name} is a states file: {', '.join(ignored)} ignored (they apply to a model)")
    x = extract.load_states(path)
    chosen = extract.parse_layers(layers, x.shape[0] - 1)
    n = min(tokens, x.shape[1])
    if n < 2:
        raise UserError(f"{path}: holds {x.shape[1]} token states; the statistics need at least 2")
    if n < tokens:
        _note(f"{path.name} holds only {n} token states (asked for --tokens {tokens}); analysing all of them", notes)
    _check_rank_cap(n, x.shape[2], notes)
    res = extract.analyse_states(x[:, :n], layers=chosen, n_pairs=n_pairs, seed=seed, cka_matrix=cka_matrix)
    settings = {
        **common,
        "text": None,
        "text_source": "states file",
        "layers": chosen,
        "token_selection": f"the first {n} rows of the file; no sequence ids, so anisotropy pairs are any "
        "two distinct tokens of one chunk of 8192 rows",
    }
    return target, _write(target, dest, settings, res, x.shape[2], x.shape[0] - 1, notes, overwrite)


def _analyse_checkpoint(
    target,
    dest,
    *,
    text,
    text_split,
    tokens,
    seq_len,
    batch_size,
    layers,
    n_pairs,
    seed,
    cka_matrix,
    target_layer,
    bos,
    positions_rule,
    exclude_massive,
    device,
    dtype,
    overwrite,
    common,
) -> dict:
    from nitp_eval.geometry import extract
    from nitp_eval.models import load_model

    notes: list[str] = []
    run_cfg = _run_config(target)
    model, tok = load_model(target.checkpoint, device=device, dtype=dtype)
    last = extract.num_hidden_layers(model)
    chosen = extract.parse_layers(layers, last)
    k, k_source, projector = _target_layer(target, run_cfg, target_layer, last)

    found = None if text else _run_validation_tokens(target, tokens)
    if found is not None:  # the run's own tokenised validation split: same tokenizer and packing as training
        ids, spec, source = found
        split = None
    else:
        spec, source = _text_spec(text, run_cfg)
        if text is None and target.from_trainer:  # the run's own tokenised validation split is gone
            _note(
                f"{target.label}: the run's validation tokens (provenance.json data_dir/val.bin) were not found; "
                f"analysing {spec} ({source})",
                notes,
            )
        split = text_split if source == "--text" else "validation"
        ids = extract.select_tokens(extract.read_text(spec, split), tok, tokens)
    if len(ids) < 2:
        raise UserError(f"{spec}: gives {len(ids)} tokens; the statistics need at least 2 (give more text with --text)")
    if len(ids) < tokens:
        _note(f"{spec} holds only {len(ids)} tokens (asked for {tokens}); analysing all of them", notes)
    _check_rank_cap(len(ids), extract.hidden_size(model), notes)

    # which tokens count: a BOS prepended (never counted) and/or window positions left out
    bos_id = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    if bos and bos_id is None:
        raise UserError(f"{target.checkpoint}: the tokenizer has no BOS (or CLS) token; drop --bos")
    if positions_rule == "auto":
        bos = bos_id is not None
        excluded_positions = () if bos else (0,)
    else:
        excluded_positions = positions_rule
    if not bos:
        bos_id = None

    max_pos = getattr(model.config, "max_position_embeddings", None)
    if seq_len is None:
        seq_len = int(run_cfg.get("seq_len") or DEFAULT_SEQ_LEN)
        if max_pos:
            seq_len = min(seq_len, int(max_pos) - int(bos))
    elif max_pos and seq_len + int(bos) > max_pos:
        raise UserError(
            f"--seq-len {seq_len}: longer than the model's max_position_embeddings={max_pos}; use --seq-len {max_pos - int(bos)} or less"
        )
    if len(excluded_positions) >= seq_len:
        raise UserError(
            f"--exclude-positions leaves out {len(excluded_positions)} of --seq-len {seq_len} positions; "
            "leave out fewer or use longer windows"
        )
    windows = extract.make_windows(ids, seq_len)
    if n_pairs > 0 and len(windows) < 2:
        raise UserError(
            f"{len(ids)} tokens make one window of --seq-len {seq_len}: the sampled anisotropy needs tokens from "
            f"2 different sequences; give more text, a smaller --seq-len or --n-pairs 0"
        )

    res = extract.analyse_model(
        model,
        windows,
        layers=chosen,
        batch_size=batch_size,
        n_pairs=n_pairs,
        seed=seed,
        pad_id=tok.pad_token_id,
        bos_id=bos_id,
        cka_matrix=cka_matrix,
        target_layer=k,
        projector=projector,
        exclude_positions=excluded_positions,
        exclude_massive=exclude_massive,
    )
    settings = {
        **common,
        "text": spec,
        "text_source": source,
        "text_split": split if source == "--text" else None,
        "seq_len": seq_len,
        "bos": bos,
        "exclude_positions": list(excluded_positions),
        "layers": chosen,
        "target_layer": k,
        "target_layer_source": k_source,
        "device": str(next(model.parameters()).device),
        "token_selection": (
            "documents tokenised without special tokens, joined by EOS (the trainer's packing); "
            f"first {len(ids)} tokens; consecutive windows of {seq_len}, last one shorter and "
            "padded (padding excluded); windows batched in a seeded random order"
            + ("; BOS prepended to each window and excluded" if bos else "; no BOS")
            + (f"; window positions {list(excluded_positions)} excluded" if excluded_positions else "")
            + (
                f"; tokens with norm > {exclude_massive} x their batch's median in any reported layer excluded"
                if exclude_massive
                else ""
            )
        ),
    }
    return _write(target, dest, settings, res, extract.hidden_size(model), last, notes, overwrite)


def _note(message: str, notes: list[str] | None = None) -> None:
    """One line on stderr; also kept in the results' `notes` when it qualifies the numbers."""
    typer.echo(f"note: {message}", err=True)
    if notes is not None:
        notes.append(message)


def _check_rank_cap(n: int, dim: int, notes: list[str]) -> None:
    if n - 1 < dim:
        _note(
            f"{n} tokens for dim {dim}: the effective ranks are capped at tokens - 1 = {n - 1} < dim; "
            f"compare them only at equal token counts, or analyse more than {dim} tokens",
            notes,
        )


def _write(target, dest, settings, res, dim, last, notes, overwrite) -> dict:
    from nitp_eval.geometry.extract import rank_cap
    from nitp_eval.runs import results_header, write_json

    if res["pairs"] < settings["n_pairs"]:  # only when no batch holds two sequences
        _note(
            f"{res['pairs']} anisotropy pairs sampled of --n-pairs {settings['n_pairs']} (too few sequences per batch)",
            notes,
        )
    payload = {
        **results_header("geometry", target, settings),
        **res,
        "dim": dim,
        "num_layers": last,
        "rank_cap": rank_cap(res["tokens"], dim),
        "notes": notes,
    }
    write_json(dest, payload, overwrite)
    payload["_path"] = str(dest)
    return payload


def _run_config(target) -> dict:
    """The arm's config.yaml when the target comes from a run, else {}."""
    import yaml

    if not target.from_trainer:
        return {}
    cfg_path = target.checkpoint.parent.parent / "config.yaml"
    if not cfg_path.exists():
        return {}
    try:
        return yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{cfg_path}: not valid YAML ({e.__class__.__name__}); fix or remove it") from e


def _run_validation_tokens(target, tokens: int):
    """(ids, spec, source) from the run's token cache (provenance.json data_dir/val.bin), or None."""
    import json

    import numpy as np

    if not target.from_trainer:
        return None
    prov_path = target.checkpoint.parent.parent / "provenance.json"
    try:
        data_dir = Path(json.loads(prov_path.read_text())["data_dir"])
        if not data_dir.is_absolute() and not data_dir.exists() and target.pair_dir is not None:
            data_dir = target.pair_dir / "data" / data_dir.name
        meta = json.loads((data_dir / "meta.json").read_text())
    except (OSError, KeyError, ValueError):
        return None
    if not meta.get("val_tokens") or not (data_dir / "val.bin").exists():
        return None
    try:
        val = np.memmap(data_dir / "val.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    except (ValueError, TypeError) as e:  # a size that is no whole number of tokens: cut short
        raise UserError(
            f"{data_dir / 'val.bin'}: unreadable as {meta['dtype']} tokens ({e.__class__.__name__}); the token cache "
            "is cut short or corrupt: delete its dir and re-run `nitp-train pair` to re-tokenise, or pass --text"
        ) from e
    # a memmap slice: windows are views of it, read from disk batch by batch
    return val[:tokens], str(data_dir / "val.bin"), f"run validation tokens ({meta.get('validation')})"


def _text_spec(text, run_cfg) -> tuple[str, str]:
    """(spec, where it came from): --text, the run's data.validation text, or the built-in validation split."""
    if text:
        return text, "--text"
    data = run_cfg.get("data") or {}
    val = data.get("validation")
    if val:
        from nitp_train.data import resolve_files

        if resolve_files(val) is not None:  # local text that still exists; HF ids are not retried offline
            return val, "run data.validation"
    from nitp_train.data import BUILTIN_VAL  # the trainer's built-in validation split

    return str(BUILTIN_VAL), "built-in validation corpus (run validation text not given or not found)"


def _target_layer(target, run_cfg, option, last):
    """(k, source, projector or None). An explicit --target-layer wins; then the projector, config, default."""
    from nitp_train.objective import PROJECTOR_FILE, NITPObjective, resolve_target_layer

    projector = None
    if (target.checkpoint / PROJECTOR_FILE).exists():
        from safetensors import SafetensorError

        from nitp_eval.models import first_line

        try:
            projector = NITPObjective.load(target.checkpoint)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise UserError(
                f"{target.checkpoint / PROJECTOR_FILE}: unreadable ({e.__class__.__name__}: {first_line(e)}); the file "
                "is cut short or corrupt: restore it, or remove it to analyse the model without its projector"
            ) from e
        if projector.num_layers != last:
            raise UserError(
                f"{target.checkpoint / PROJECTOR_FILE}: made for {projector.num_layers} layers, the model has {last}"
            )
    if option is not None:
        if not 0 <= option <= last:
            raise UserError(f"--target-layer {option}: out of range; this model has hidden_states 0..{last}")
        return option, "--target-layer", projector
    if projector is not None:
        return projector.target_layer, "nitp_projector.safetensors", projector
    tl = (run_cfg.get("objective") or {}).get("target_layer")
    if tl is not None:
        try:
            return resolve_target_layer(tl, last), "run objective.target_layer", None
        except ValueError:
            pass
    from nitp_train.objective import ObjectiveConfig

    return resolve_target_layer(ObjectiveConfig().target_layer, last), "default ceil(0.2 L), the trainer's rule", None


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
            _note(f"{target.label}: {flag}")
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


def massive_flag(r: dict) -> str | None:
    """One sentence when some layers are dominated by a few tokens (also used by the report), else None."""
    m = r.get("massive") or {}
    dominated = m.get("dominated_layers") or []
    if not dominated:
        return None
    pl = r["per_layer"]
    idx = [r["layers"].index(layer) for layer in dominated]
    where: dict[int, int] = {}
    for i in idx:
        for pos, n in (pl["outlier_positions"][i] or {}).items():
            where[int(pos)] = max(where.get(int(pos), 0), n)
    top = sorted(where.items(), key=lambda kv: -kv[1])[:3]
    at = (
        f"; outliers (norm > {m['k']:g} x median) sit at window positions "
        + ", ".join(f"{p} ({n} tokens)" for p, n in top)
        if top
        else ""
    )
    return (
        f"in layers {_ranges(dominated)} the top 1 % of tokens carry >= {m['dominated_share']:.0%} of the squared "
        f"norms (max {max(pl['norm_max'][i] / pl['norm_median'][i] for i in idx):.0f} x the median){at}: these "
        "layers' effective rank and CKA describe those few tokens; see --exclude-positions / --exclude-massive "
        "(docs/footguns.md)"
    )


def _ranges(layers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(f"{start}-{layer}" if layer != start else f"{layer}")
            start = None
    return ", ".join(out)
