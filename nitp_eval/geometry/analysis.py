"""Geometry from settings to written results: resolve the targets (runs.py), load each (models.py), compute
(extract.py), write (runs.py). A checkpoint or a states file. The CLI parses the settings and prints."""

from __future__ import annotations

from pathlib import Path

import typer

from nitp_eval.geometry import extract
from nitp_eval.geometry.settings import GeometrySettings
from nitp_train.errors import UserError

DEFAULT_SEQ_LEN = 512


class Notes:
    """note(message, qualifies=False): one line on stderr; kept for the results' `notes` when it qualifies the numbers."""

    def __init__(self):
        self.kept: list[str] = []

    def __call__(self, message: str, qualifies: bool = False) -> None:
        typer.echo(f"note: {message}", err=True)
        if qualifies:
            self.kept.append(message)


def run_geometry(
    paths: list[Path],
    settings: GeometrySettings,
    *,
    series: Path | None = None,
    revisions: str | None = None,
    all_steps: bool = False,
    out: Path | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
) -> list[tuple]:
    """Analyse every target `paths` names and write its results: [(target, written payload)], in order.

    Every destination is checked before any work; nothing is written for a target that fails.
    """
    from nitp_eval.models import pick_device, resolve_dtype
    from nitp_eval.models import stats_device as where_stats
    from nitp_eval.runs import Target, check_destinations, pending_targets, resolve_series, write_results

    settings.check()
    positions_rule = extract.parse_exclude_positions(settings.exclude_positions)
    model_device = pick_device(settings.device)
    dtype = resolve_dtype(settings.dtype, model_device)
    stats_on = where_stats(settings.stats_device, model_device)
    common = {
        "tokens_requested": settings.tokens,
        "batch_size": settings.batch_size,
        "layers_option": settings.layers,
        "n_pairs": settings.n_pairs,
        "seed": settings.seed,
        "cka_matrix": settings.cka_matrix,
        "dtype": dtype,
        "stats_device": stats_on,
        "exclude_positions_option": settings.exclude_positions,
        "exclude_massive": settings.exclude_massive,
        "metrics": settings.metrics.to_dict(),  # schema 2: the conventions of the metrics beyond schema 1
    }

    path = paths[0]
    states = [p for p in paths if p.is_file() and p.suffix.lower() in extract.STATES_SUFFIXES]
    if states and (len(paths) > 1 or series is not None or revisions is not None):
        raise UserError(
            f"{states[0]}: a states file is analysed on its own; give it alone, without --series/--revisions"
        )
    if states:
        ignored = settings.ignored_by_states_file(all_steps)
        target = Target(path.resolve())
        [dest] = check_destinations([target], "geometry", out, overwrite)
        notes = Notes()
        if ignored:
            notes(f"{path.name} is a states file: {', '.join(ignored)} ignored (they apply to a model)")
        header, body = analyse_states_file(path, settings, common=common, note=notes)
        return [(target, write_results("geometry", target, dest, header, {**body, "notes": notes.kept}, overwrite))]

    targets = resolve_series(paths, series, revisions, all_steps)
    targets = pending_targets(targets, "geometry", out, skip_existing, overwrite)
    if not targets:
        return []
    dests = check_destinations(targets, "geometry", out, overwrite)  # every results path, before any work
    written = []
    for target, dest in zip(targets, dests):
        notes = Notes()
        header, body = analyse_checkpoint(
            target,
            settings,
            positions_rule=positions_rule,
            dtype=dtype,
            stats_device=stats_on,
            common=common,
            note=notes,
        )
        written.append(
            (target, write_results("geometry", target, dest, header, {**body, "notes": notes.kept}, overwrite))
        )
    return written


def analyse_checkpoint(
    target, settings: GeometrySettings, *, positions_rule, dtype, stats_device=None, common, note
) -> tuple[dict, dict]:
    """Geometry of one checkpoint: (results-header settings, results body). Run defaults from runs.py, the model
    from models.py.

    `note(message, qualifies)` reports a remark (printed at once); with qualifies=True it is also
    kept in the results' `notes`.
    """
    s = settings
    text, text_split, text_revision, tokens = s.text, s.text_split, s.text_revision, s.tokens
    seq_len, bos, exclude_massive, n_pairs = s.seq_len, s.bos, s.exclude_massive, s.n_pairs
    from nitp_eval.models import load_model
    from nitp_eval.runs import run_config, run_text, run_validation_tokens, target_layer

    run_cfg = run_config(target)
    model, tok = load_model(target.checkpoint, device=s.device, dtype=dtype)
    last = extract.num_hidden_layers(model)
    chosen = extract.parse_layers(s.layers, last)
    k, k_source, projector = target_layer(target, run_cfg, s.target_layer, last)

    found = None if text else run_validation_tokens(target, tokens)
    if found is not None:  # the run's own tokenised validation split: same tokenizer and packing as training
        ids, spec, source = found
        split = None
    else:
        spec, source = run_text(text, run_cfg)
        if text is None and target.from_trainer:  # the run's own tokenised validation split is gone
            note(
                f"{target.label}: the run's validation tokens (provenance.json data_dir/val.bin) were not found; "
                f"analysing {spec} ({source})",
                True,
            )
        split = text_split if source == "--text" else "validation"
        ids = extract.select_tokens(extract.read_text(spec, split, text_revision), tok, tokens)
    if len(ids) < 2:
        raise UserError(f"{spec}: gives {len(ids)} tokens; the statistics need at least 2 (give more text with --text)")
    if len(ids) < tokens:
        note(f"{spec} holds only {len(ids)} tokens (asked for {tokens}); analysing all of them", True)
    check_rank_cap(len(ids), extract.hidden_size(model), note)

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
        batch_size=s.batch_size,
        n_pairs=n_pairs,
        seed=s.seed,
        pad_id=tok.pad_token_id,
        bos_id=bos_id,
        cka_matrix=s.cka_matrix,
        target_layer=k,
        projector=projector,
        exclude_positions=excluded_positions,
        exclude_massive=exclude_massive,
        stats_device=stats_device,
        options=s.metrics,
    )
    settings = {
        **common,
        "text": spec,
        "text_source": source,
        "text_split": split if source == "--text" else None,
        "text_revision": text_revision if source == "--text" else None,
        # the exact token ids analysed (text, tokenizer, selection): reports compare arms only when it is equal
        "text_sha256": extract.token_sha256(ids),
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
    return settings, body(settings, res, extract.hidden_size(model), last, note)


def analyse_states_file(path, settings: GeometrySettings, *, common, note) -> tuple[dict, dict]:
    """Geometry of a states file: (results-header settings, results body)."""
    tokens = settings.tokens
    x = extract.load_states(path)
    chosen = extract.parse_layers(settings.layers, x.shape[0] - 1)
    n = min(tokens, x.shape[1])
    if n < 2:
        raise UserError(f"{path}: holds {x.shape[1]} token states; the statistics need at least 2")
    if n < tokens:
        note(f"{path.name} holds only {n} token states (asked for --tokens {tokens}); analysing all of them", True)
    check_rank_cap(n, x.shape[2], note)
    res = extract.analyse_states(
        x[:, :n],
        layers=chosen,
        n_pairs=settings.n_pairs,
        seed=settings.seed,
        cka_matrix=settings.cka_matrix,
        options=settings.metrics,
    )
    settings = {
        **common,
        "text": None,
        "text_source": "states file",
        "text_sha256": extract.states_sha256(x, n),  # the analysed rows, every layer
        "layers": chosen,
        "token_selection": f"the first {n} rows of the file; no sequence ids, so anisotropy pairs are any "
        "two distinct tokens of one chunk of 8192 rows (and the per-sequence metrics are null)",
    }
    return settings, body(settings, res, x.shape[2], x.shape[0] - 1, note)


def check_rank_cap(n: int, dim: int, note) -> None:
    if n - 1 < dim:
        note(
            f"{n} tokens for dim {dim}: the effective ranks are capped at tokens - 1 = {n - 1} < dim; "
            f"compare them only at equal token counts, or analyse more than {dim} tokens",
            True,
        )


def body(settings: dict, res: dict, dim: int, last: int, note) -> dict:
    """The results body of one analysis: the metrics plus the model facts every reader needs (not `notes`)."""
    if res["pairs"] < settings["n_pairs"]:  # only when no batch holds two sequences
        note(
            f"{res['pairs']} anisotropy pairs sampled of --n-pairs {settings['n_pairs']} (too few sequences per batch)",
            True,
        )
    return {
        **res,
        "dim": dim,
        "num_layers": last,
        "rank_cap": extract.rank_cap(res["tokens"], dim),
        "tokens_per_dim": res["tokens"] / dim,  # what biases the effective rank (docs/footguns.md)
    }
