"""Stream hidden states of a model (or a saved states file) into the per-layer geometry statistics.

Token selection (docs/geometry.md, "Which tokens"): the documents of the text are tokenised
without special tokens and joined with the tokenizer's EOS token, as the trainer packs its
corpus (documents longer than 64k characters in pieces, reading stops once enough tokens are
collected); the stream is cut to the first `tokens` tokens and split into consecutive windows
of `seq_len` (the last one may be shorter; it is padded and the padding is excluded). With
`bos=True` a BOS token is prepended to every window and excluded from the statistics.
Windows are batched in a seeded random order, so the sampled anisotropy pairs (drawn from
different windows of one batch) come from across the text, like a training mini-batch.

Nothing grows with the token count except the token ids (an int32 array, 4 bytes per token;
windows are views of it): per layer a `CovarianceAccumulator`
(O(d^2)), a `CrossMomentAccumulator` to the last layer (O(d^2)) and, on request, one per
layer pair for the full CKA matrix (O(layers^2 d^2)).
"""

from __future__ import annotations

import hashlib
import itertools
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from nitp_eval.geometry.estimators import MetricOptions, TokenSample, unembedding_metrics
from nitp_train.errors import UserError
from nitp_train.metrics import (
    DOMINATED_SHARE,
    MASSIVE_K,
    CovarianceAccumulator,
    CrossMomentAccumulator,
    massive_mask,
    norm_summary,
    sample_cross_pairs,
)

STATES_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


# ---------------------------------------------------------------------------- token selection

PIECE_CHARS = 65_536  # longer documents are tokenised in pieces of at most this many characters
_LINE_CUT = re.compile(r"(?<=\S\n)(?=\S)")  # a line start after a single newline
_WORD_CUT = re.compile(r"(?<=\S)(?= \S)")  # before a single space between two words


def read_text(spec: str, split: str = "validation", revision: str | None = None):
    """Documents of `spec`: local files or an HF dataset id, through the trainer's reader.

    HF ids are streamed, so only the records that are used are read: `select_tokens` stops once it
    has enough tokens, whatever the size of the split.
    """
    from nitp_train.data import read_documents

    return read_documents(spec, split=split, revision=revision)


def text_pieces(doc: str, size: int = PIECE_CHARS):
    """`doc` in pieces of at most `size` characters (one piece when it is that short).

    Cuts go at a line start after a single newline, else before a single space between words,
    else anywhere. Byte-level BPE pre-tokenisers (GPT-2, Qwen2, Llama 3) and WordPiece never
    join tokens across such a cut, so their ids are those of the whole document (tested for
    GPT-2); SentencePiece tokenisers may differ in a token at each cut.
    """
    start = 0
    while len(doc) - start > size:
        cut = start + size  # no cut found in the second half: split anywhere
        for pattern in (_LINE_CUT, _WORD_CUT):
            found = [m.start() for m in pattern.finditer(doc, start + size // 2, start + size)]
            if found:
                cut = found[-1]
                break
        yield doc[start:cut]
        start = cut
    yield doc[start:]


def select_tokens(docs, tokenizer, tokens: int) -> np.ndarray:
    """The first `tokens` ids (int32) of the packed stream doc_1 EOS doc_2 EOS ... (the trainer's packing).

    Long documents are tokenised in pieces (`text_pieces`) and reading stops once `tokens` ids
    are collected, so time and memory follow `tokens`, not the size of the text.
    """
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    eos = np.array([] if sep is None else [sep], dtype=np.int32)
    parts: list[np.ndarray] = []
    n = 0
    batch: list[str | None] = []  # text pieces; None marks the end of a document (an EOS)

    def flush():
        nonlocal n
        texts = [b for b in batch if b is not None]
        encoded = iter(tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else [])
        for b in batch:
            part = eos if b is None else np.asarray(next(encoded), dtype=np.int32)
            parts.append(part)
            n += len(part)
        batch.clear()

    def units():
        for doc in docs:
            yield from text_pieces(doc, PIECE_CHARS)
            yield None

    chars = 0
    for unit in units():
        batch.append(unit)
        chars += len(unit or "")
        if len(batch) >= 32 or chars >= PIECE_CHARS:  # batching only affects speed, never the ids
            flush()
            chars = 0
            if n >= tokens:
                break
    flush()
    return np.concatenate(parts)[:tokens] if parts else np.zeros(0, dtype=np.int32)


def token_sha256(ids, chunk: int = 1 << 20) -> str:
    """sha256 hex of the token ids as little-endian int32: equal ids give equal hashes whatever their storage
    dtype (a run's uint16 val.bin or `select_tokens`' int32), so two analyses with equal hashes saw the same tokens.

    Hashed in chunks: a memory-mapped val.bin is never copied whole.
    """
    h = hashlib.sha256()
    for s in range(0, len(ids), chunk):
        h.update(np.ascontiguousarray(ids[s : s + chunk], dtype="<i4").tobytes())
    return h.hexdigest()


def make_windows(ids, seq_len: int) -> list:
    """Consecutive windows of `seq_len` tokens (slices: views of an array); the last one keeps the remainder."""
    return [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]


def batch_rows(n_windows: int, batch_size: int, seed: int) -> list[list[int]]:
    """Window indices of each batch: the windows in a seeded random order, `batch_size` at a time."""
    order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[s : s + batch_size] for s in range(0, n_windows, batch_size)]


def batches(windows, batch_size: int, seed: int, pad_id: int, bos_id: int | None = None, exclude_positions=()):
    """(input_ids, attention_mask, valid, positions) per batch of `batch_rows`.

    `valid` marks the positions whose states are counted: real tokens, not padding, not BOS, not
    the window positions in `exclude_positions` (0 = the first token of the window's text, after a
    BOS; negative counts from the window's end). `positions` is each position's index in its window's
    text (-1 for BOS and padding).
    """
    extra = 1 if bos_id is not None else 0
    for rows in batch_rows(len(windows), batch_size, seed):
        width = max(len(windows[i]) for i in rows) + extra
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.full((len(rows), width), -1, dtype=torch.long)
        for b, i in enumerate(rows):
            w = windows[i]
            input_ids[b, extra : extra + len(w)] = torch.from_numpy(np.asarray(w, dtype=np.int64))
            attention[b, : extra + len(w)] = 1
            positions[b, extra : extra + len(w)] = torch.arange(len(w))
            for p in exclude_positions:
                if -len(w) <= p < len(w):
                    positions[b, extra + p % len(w)] = -2  # excluded by position
        if extra:
            input_ids[:, 0] = bos_id
        valid = positions >= 0
        positions[positions == -2] = -1
        yield input_ids, attention, valid, positions


def pair_quotas(n_pairs: int, cross: list[int]) -> list[int]:
    """`n_pairs` shared out over batches in proportion to the cross-sequence pairs each one holds.

    The quotas sum exactly to `n_pairs` (unless no batch has a cross pair), so a batch of a
    single sequence, which has none, loses nothing, and the pairs are spread uniformly over all
    within-batch cross-sequence pairs.
    """
    total = sum(cross)
    if total == 0:
        return [0] * len(cross)
    bounds = [0] + [n_pairs * c // total for c in itertools.accumulate(cross)]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def cross_pairs(sizes) -> int:
    """Ordered pairs of tokens from different sequences among sequences of these sizes."""
    return sum(sizes) ** 2 - sum(s * s for s in sizes)


# ---------------------------------------------------------------------------- accumulation


@dataclass
class GeometryStats:
    """All streaming statistics of one analysis: per layer, CKA, shallow-to-deep alignment."""

    layers: list[int]  # hidden_states indices reported
    last: int  # index of the last hidden state (L)
    dim: int
    cka_matrix: bool = False
    target_layer: int | None = None  # k for cos_next
    projector: object = None  # NITPObjective, for projector_cos
    acc: dict = field(default_factory=dict)
    to_last: dict = field(default_factory=dict)
    pairwise: dict = field(default_factory=dict)
    cos_next_sum: float = 0.0
    cos_next_n: int = 0
    proj_cos_sum: float = 0.0
    proj_cos_n: int = 0
    massive_k: float = MASSIVE_K  # outlier rule of the norm diagnostics
    norms: dict = field(default_factory=dict)  # layer -> list of float32 arrays: 4 bytes per token and layer
    positions: list = field(default_factory=list)  # window position of each counted token (int32)
    excluded_norms: dict = field(default_factory=dict)  # layer -> norms of tokens left out (BOS, positions, rule)
    excluded: dict = field(default_factory=dict)  # why -> count of tokens left out
    options: MetricOptions = field(default_factory=MetricOptions)  # conventions of the metrics beyond schema 1
    seed: int = 0  # of the TwoNN subsample
    sequences_known: bool = True  # rows come grouped by real sequences (not a states file)
    per_sequence: dict = field(default_factory=dict)  # layer -> SequenceAccumulator
    sample: TokenSample | None = None

    def __post_init__(self):
        tracked = sorted(set(self.layers) | {self.last})
        self.acc = {layer: CovarianceAccumulator(self.dim) for layer in tracked}
        self.to_last = {
            layer: CrossMomentAccumulator(self.dim, self.dim) for layer in self.layers if layer != self.last
        }
        if self.cka_matrix:
            self.pairwise = {
                (a, b): CrossMomentAccumulator(self.dim, self.dim)
                for i, a in enumerate(self.layers)
                for b in self.layers[i + 1 :]
            }
        if self.options.extra:
            self.sample = TokenSample(self.options.twonn_sample, self.seed)
            if self.sequences_known:
                self.per_sequence = {layer: self.options.sequences(self.dim) for layer in self.layers}

    def update(self, states, groups: torch.Tensor, pairs, positions=None) -> None:
        """`states`: layer index -> [n, d] rows of the counted tokens, same rows for every layer."""
        for layer in self.layers:
            self.norms.setdefault(layer, []).append(states[layer].float().norm(dim=1).cpu().numpy())
        if positions is not None:
            self.positions.append(np.asarray(positions, dtype=np.int32))
        for layer, acc in self.acc.items():
            acc.update(states[layer], groups=groups, pairs=pairs)
        for layer, cross in self.to_last.items():
            cross.update(states[layer], states[self.last])
        for (a, b), cross in self.pairwise.items():
            cross.update(states[a], states[b])
        for layer, seq in self.per_sequence.items():
            seq.update(states[layer], groups)
        if self.sample is not None:
            self.sample.update({layer: states[layer] for layer in self.layers})

    @torch.no_grad()
    def update_alignment(self, hidden_states, valid: torch.Tensor) -> None:
        """cos(h_t, z_{t+1}) with z from the target layer; and through the NITP projector when present."""
        from nitp_train.objective import alignment_loss, shifted_pairs

        h_last = hidden_states[self.last].float()
        if self.target_layer is not None:
            src, tgt, ok = shifted_pairs(h_last, hidden_states[self.target_layer].float(), valid, "next")
            cos = 1 - alignment_loss(src[ok], tgt[ok], "cosine")
            self.cos_next_sum += float(cos.double().sum())
            self.cos_next_n += int(ok.sum())
        # the cosine s through the projector, with its own layer and shift (= 1 - L_NITP for the cosine loss)
        if self.projector is not None:
            obj = self.projector
            z = hidden_states[obj.target_layer].float()
            src, tgt, ok = shifted_pairs(h_last, z, valid, obj.config.shift)
            cos = 1 - alignment_loss(obj.projector(src[ok]), tgt[ok], "cosine")
            self.proj_cos_sum += float(cos.double().sum())
            self.proj_cos_n += int(ok.sum())

    def exclude(self, why: str, states) -> None:
        """Record tokens left out of every statistic: `states` layer -> [m, d] rows of them."""
        m = len(next(iter(states.values()))) if states else 0
        if m == 0:
            return
        self.excluded[why] = self.excluded.get(why, 0) + m
        for layer in self.layers:
            self.excluded_norms.setdefault(layer, []).append(states[layer].float().norm(dim=1).cpu().numpy())

    def norm_results(self) -> dict:
        """Per layer: `norm_summary` of the counted tokens, and the median norm of the excluded ones."""
        positions = np.concatenate(self.positions) if self.positions else None
        per = {}
        for layer in self.layers:
            norms = np.concatenate(self.norms.get(layer) or [np.zeros(0, np.float32)])
            summary = norm_summary(
                norms, positions if positions is not None and len(positions) == len(norms) else None, self.massive_k
            )
            ex = self.excluded_norms.get(layer)
            summary["excluded_norm_median"] = float(np.median(np.concatenate(ex))) if ex else None
            per[layer] = summary
        keys = ["norm_median", "norm_max", "top1pct_share", "outliers", "outlier_positions", "excluded_norm_median"]
        return {key: [per[layer][key] for layer in self.layers] for key in keys}

    def extra_results(self) -> dict:
        """Per layer: RankMe, alpha-ReQ, TwoNN, prompt and dataset entropy, curvature (none when options.extra is off)."""
        o = self.options
        if not o.extra:
            return {}
        nan = float("nan")
        seq = self.per_sequence
        return {
            "rankme": [self.acc[i].rankme(o.rankme_eps, o.rankme_center) for i in self.layers],
            "alpha_req": [self.acc[i].alpha_req(o.alpha_fit_range, o.alpha_weighted) for i in self.layers],
            "twonn": [self.sample.twonn(i, o.twonn_discard) for i in self.layers],
            "prompt_entropy": [seq[i].prompt_entropy() if seq else nan for i in self.layers],
            "dataset_entropy": [seq[i].dataset_entropy() if seq else nan for i in self.layers],
            "curvature": [seq[i].curvature() if seq else nan for i in self.layers],
        }

    def results(self) -> dict:
        last = self.acc[self.last]

        def cka(layer):
            if layer == self.last:
                return 1.0
            return self.to_last[layer].cka(self.acc[layer], last)

        per_layer = {
            "erank_cov": [self.acc[i].erank_cov() for i in self.layers],
            "erank_sv": [self.acc[i].erank_sv() for i in self.layers],
            "anisotropy": [self.acc[i].anisotropy_sampled() for i in self.layers],
            "anisotropy_exact": [self.acc[i].anisotropy_exact() for i in self.layers],
            "anisotropy_cross_exact": [self.acc[i].anisotropy_cross_exact() for i in self.layers],
            "anisotropy_batch_cross_exact": [self.acc[i].anisotropy_batch_cross_exact() for i in self.layers],
            "cka_to_last": [cka(i) for i in self.layers],
            "mean_norm": [self.acc[i].mean_norm() for i in self.layers],
            **self.norm_results(),
            **self.extra_results(),
        }
        dominated = [
            layer
            for layer, share in zip(self.layers, per_layer["top1pct_share"])
            if share is not None and share == share and share >= DOMINATED_SHARE
        ]
        matrix = None
        if self.cka_matrix:
            n = len(self.layers)
            matrix = [[1.0] * n for _ in range(n)]
            for (a, b), cross in self.pairwise.items():
                i, j = self.layers.index(a), self.layers.index(b)
                matrix[i][j] = matrix[j][i] = cross.cka(self.acc[a], self.acc[b])
        projector_target = self.projector.target_layer if self.projector is not None else None
        extra = {}
        if self.options.extra:
            extra["samples"] = {
                "twonn": {
                    "tokens": self.sample.n_,
                    "of": self.sample.seen_ if self.sample.n_ else 0,
                    "seed": self.seed,
                },
                "prompt_entropy": {
                    "sequences": self.per_sequence[self.layers[0]].prompt_n_ if self.per_sequence else 0
                },
                "sequences": self.per_sequence[self.layers[0]].sequences_ if self.per_sequence else 0,
            }
        return {
            **extra,
            "tokens": int(last.n_),
            "pairs": int(last.n_pairs_),
            "layers": list(self.layers),
            "per_layer": per_layer,
            "cka_matrix": matrix,
            "massive": {
                "k": self.massive_k,
                "dominated_share": DOMINATED_SHARE,
                "dominated_layers": dominated,
                "excluded": dict(self.excluded),
            },
            "alignment": {
                "target_layer": self.target_layer,
                "cos_next": self.cos_next_sum / self.cos_next_n if self.cos_next_n else None,
                "projector_cos": self.proj_cos_sum / self.proj_cos_n if self.proj_cos_n else None,
                "projector_target_layer": projector_target,
                "positions": self.cos_next_n,
            },
        }


def analyse_model(
    model,
    windows,
    *,
    layers: list[int],
    batch_size: int,
    n_pairs: int,
    seed: int,
    pad_id: int,
    bos_id: int | None = None,
    cka_matrix: bool = False,
    target_layer: int | None = None,
    projector=None,
    exclude_positions=(),
    exclude_massive: float | None = None,
    progress: bool = True,
    stats_device: str | None = None,
    options: MetricOptions | None = None,
) -> dict:
    """Run `model` over `windows` (token id arrays or lists) and return the geometry results dict (see GeometryStats).

    Left out of every statistic: padding, a BOS (`bos_id`), the window positions `exclude_positions`
    and, with `exclude_massive` K, every token whose norm exceeds K x its batch's median norm in any
    tracked layer (`nitp_train.metrics.massive_mask`). What was left out is counted in
    `massive.excluded`. Non-finite hidden states are an error naming the layer and the count.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    total = sum(len(w) for w in windows)
    last = num_hidden_layers(model)
    options = options or MetricOptions()
    stats = GeometryStats(
        layers, last, hidden_size(model), cka_matrix, target_layer, projector, options=options, seed=seed
    )
    stats.massive_k = exclude_massive or MASSIVE_K
    if projector is not None:
        projector.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    # pairs per batch by its cross-window pairs: a batch of one window (often the last) has none to give
    quotas = pair_quotas(
        n_pairs,
        [
            cross_pairs([len(windows[i]) - _excluded_count(len(windows[i]), exclude_positions) for i in rows])
            for rows in batch_rows(len(windows), batch_size, seed)
        ],
    )
    bar = tqdm(total=total, desc="geometry", unit="tok", disable=not progress, leave=False)
    backbone = getattr(model, "base_model", model)  # no LM head: the logits would dwarf everything else
    batch_iter = batches(windows, batch_size, seed, pad_id, bos_id, exclude_positions)
    with torch.no_grad():
        for (input_ids, attention, valid, positions), quota in zip(batch_iter, quotas):
            out = backbone(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), output_hidden_states=True
            )
            hs = out.hidden_states
            if len(hs) != last + 1:
                raise UserError(
                    f"model returned {len(hs)} hidden states, expected {last + 1}; unsupported architecture"
                )
            real = attention.bool()
            check_finite({layer: hs[layer][real.to(device)] for layer in stats.acc}, "hidden states")
            if bos_id is not None:
                bos = torch.zeros_like(real)
                bos[:, 0] = True
                stats.exclude("bos", {layer: hs[layer][bos.to(device)] for layer in stats.layers})
            by_pos = real & ~valid  # real tokens not counted: the BOS and the excluded positions
            if bos_id is not None:
                by_pos[:, 0] = False
            stats.exclude("positions", {layer: hs[layer][by_pos.to(device)] for layer in stats.layers})
            if exclude_massive:
                # the rule per tracked layer over this batch's candidates; a token out in one layer is out in all
                # (CKA needs the same tokens in every layer)
                valid_d = valid.to(device)
                out_any = torch.zeros(int(valid.sum()), dtype=torch.bool, device=device)
                for layer in stats.acc:
                    out_any |= massive_mask(hs[layer][valid_d].float().norm(dim=1), exclude_massive)
                flat = valid.clone()
                flat[valid] = out_any.cpu()
                stats.exclude("massive", {layer: hs[layer][flat.to(device)] for layer in stats.layers})
                valid = valid & ~flat
            valid_d = valid.to(device)
            n = int(valid.sum())
            groups = torch.arange(len(valid)).unsqueeze(1).expand_as(valid)[valid]
            # quotas assume the position rule only; the massive rule may leave fewer cross pairs (rare)
            pairs = sample_cross_pairs(groups, quota, gen)
            # float64 sums where float64 is fast (stats_device): the CPU for GPUs with slow float64
            on = torch.device(stats_device) if stats_device else device
            states = {layer: hs[layer][valid_d].to(on) for layer in stats.acc}
            stats.update(states, groups.to(on), tuple(p.to(on) for p in pairs), positions[valid].numpy())
            stats.update_alignment(hs, valid_d)
            bar.update(n)
    bar.close()
    res = stats.results()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if options.extra and head is not None and getattr(head, "weight", None) is not None:
        # the LM head's weight (tied or not) against the last hidden state, which is what it multiplies
        res["unembedding"] = unembedding_metrics(head.weight, stats.acc[last].covariance(), options.unembedding_top_k)
    return res


def _excluded_count(length: int, exclude_positions) -> int:
    return len({p % length for p in exclude_positions if -length <= p < length})


def check_finite(states: dict, what: str) -> None:
    """UserError naming the layers and counts of non-finite values (NaN/inf would poison every running sum)."""
    bad = {}
    for layer, x in states.items():
        n = int((~torch.isfinite(x)).sum())
        if n:
            bad[layer] = n
    if bad:
        where = ", ".join(f"layer {layer}: {n}" for layer, n in sorted(bad.items()))
        raise UserError(
            f"{what} hold non-finite values (NaN or inf) ({where}); the model or file is broken or overflows "
            "in this dtype: try --dtype float32, check the checkpoint, or pick --layers without them"
        )


# ---------------------------------------------------------------------------- states files


def load_states(path: Path):
    """A [tokens, dim] or [layers, tokens, dim] array; .npy is memory-mapped (streamed), others are loaded."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            x = np.load(path, mmap_mode="r")
        elif suffix in (".pt", ".pth"):
            x = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(x, dict):
                x = _single_tensor(path, x)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            x = _single_tensor(path, load_file(str(path)))
        else:
            raise UserError(f"{path}: unknown states format; give .npy, .pt or .safetensors")
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
        from nitp_eval.models import first_line

        raise UserError(
            f"{path}: unreadable states file ({e.__class__.__name__}: {first_line(e)}); is it cut short or not a "
            ".npy/.pt/.safetensors file? Save it again"
        ) from e
    if not isinstance(x, (np.ndarray, torch.Tensor)):  # e.g. torch.save(list_of_tensors)
        raise UserError(
            f"{path}: holds a {type(x).__name__}, not one tensor; save a single [tokens, dim] or "
            "[layers, tokens, dim] tensor (e.g. torch.save(torch.stack(states), path))"
        )
    if x.ndim not in (2, 3):
        raise UserError(f"{path}: states have shape {tuple(x.shape)}; expected [tokens, dim] or [layers, tokens, dim]")
    return x if x.ndim == 3 else x[None]


def _single_tensor(path, d: dict):
    if "hidden_states" in d:
        return d["hidden_states"]
    if len(d) != 1:
        raise UserError(f"{path}: holds {len(d)} tensors {sorted(d)[:5]}; save one tensor, or name it 'hidden_states'")
    return next(iter(d.values()))


def _rows(x, layer: int, s: int, e: int) -> torch.Tensor:
    """Rows s:e of one layer of a states array as a float tensor."""
    if isinstance(x, torch.Tensor):
        chunk = x[layer, s:e]
        # numpy has no bfloat16; float64 stays float64
        return chunk if chunk.dtype in (torch.float32, torch.float64) else chunk.float()
    return torch.from_numpy(np.array(x[layer, s:e]))  # a copy: memmaps are read-only


def states_sha256(x, n: int, chunk: int = 8192) -> str:
    """sha256 hex of the bytes of the first `n` rows of every layer of a states array, as stored (its dtype),
    layer by layer in chunks of rows (a memory-mapped .npy is never read whole)."""
    h = hashlib.sha256()
    for layer in range(x.shape[0]):
        for s in range(0, n, chunk):
            rows = x[layer, s : min(n, s + chunk)]
            if isinstance(rows, torch.Tensor):  # numpy has no bfloat16: hash the tensor's own bytes
                h.update(rows.contiguous().view(torch.uint8).numpy().tobytes())
            else:
                h.update(np.ascontiguousarray(rows).tobytes())
    return h.hexdigest()


def analyse_states(
    x,
    *,
    layers: list[int],
    n_pairs: int,
    seed: int,
    chunk: int = 8192,
    cka_matrix: bool = False,
    progress: bool = True,
    options: MetricOptions | None = None,
) -> dict:
    """Geometry of saved states x [layers, tokens, dim]. No sequence ids: pairs are any two distinct tokens of a chunk."""
    from tqdm.auto import tqdm

    n_layers, n, d = x.shape
    # no sequence ids: the per-sequence metrics (entropies, curvature) are undefined, reported as null
    stats = GeometryStats(
        layers, n_layers - 1, d, cka_matrix, options=options or MetricOptions(), seed=seed, sequences_known=False
    )
    gen = torch.Generator().manual_seed(seed)
    starts = range(0, n, chunk)
    # every row its own group: a chunk of m rows holds m (m - 1) ordered pairs
    quotas = pair_quotas(n_pairs, [cross_pairs([1] * (min(n, s + chunk) - s)) for s in starts])
    for s, quota in tqdm(
        zip(starts, quotas), total=len(starts), desc="geometry", unit="chunk", disable=not progress, leave=False
    ):
        e = min(n, s + chunk)
        states = {layer: _rows(x, layer, s, e) for layer in stats.acc}
        check_finite(states, f"states rows {s}..{e - 1}")
        groups = torch.arange(s, e)
        pairs = sample_cross_pairs(torch.arange(e - s), quota, gen)
        stats.update(states, groups, pairs)
    return stats.results()


# ---------------------------------------------------------------------------- model facts


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def num_hidden_layers(model) -> int:
    return int(_text_config(model).num_hidden_layers)


def hidden_size(model) -> int:
    return int(_text_config(model).hidden_size)


def parse_layers(spec: str, last: int) -> list[int]:
    """`all`, `last`, or comma-separated hidden_states indices (negative counts from the end)."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(last + 1))
    if spec == "last":
        return [last]
    out = []
    for part in spec.split(","):
        try:
            i = int(part)
        except ValueError:
            raise UserError(
                f"--layers {spec!r}: not 'all', 'last' or comma-separated integers; e.g. --layers 0,4,8"
            ) from None
        if not -(last + 1) <= i <= last:
            raise UserError(f"--layers {i}: out of range; this model has hidden_states 0..{last} (0 = embeddings)")
        out.append(i % (last + 1))
    return sorted(set(out))


def parse_exclude_positions(spec: str):
    """`auto`, `none` (-> ()) or comma-separated window positions (-> a sorted tuple of ints)."""
    spec = spec.strip().lower()
    if spec == "auto":
        return "auto"
    if spec in ("none", ""):
        return ()
    try:
        return tuple(sorted({int(part) for part in spec.split(",")}))
    except ValueError:
        raise UserError(
            f"--exclude-positions {spec!r}: not auto, none or comma-separated integers; e.g. --exclude-positions 0"
        ) from None


def rank_cap(tokens: int, dim: int) -> int:
    """The effective rank of centred data cannot exceed this."""
    return max(0, min(tokens - 1, dim))


__all__ = [
    "read_text",
    "text_pieces",
    "select_tokens",
    "token_sha256",
    "make_windows",
    "batch_rows",
    "batches",
    "pair_quotas",
    "cross_pairs",
    "GeometryStats",
    "analyse_model",
    "check_finite",
    "load_states",
    "states_sha256",
    "analyse_states",
    "parse_layers",
    "parse_exclude_positions",
    "rank_cap",
]
