"""Data: read text, tokenise once into memory-mapped token files, serve seeded fixed-length windows.

The tokenised corpus lives in <cache_dir>/<key>/ (train.bin, val.bin, meta.json, tokenizer/), keyed
by the sources (with sizes and mtimes) and the tokenizer, so both arms of a pair and resumed runs
read the same bytes. Documents are joined with the tokenizer's EOS token; windows are
non-overlapping slices of `seq_len` tokens, ordered by a permutation drawn from the seed per epoch.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nitp_train.config import DataConfig
from nitp_train.errors import UserError

CORPUS_DIR = Path(__file__).with_name("corpus")
BUILTIN_TRAIN = CORPUS_DIR / "shakespeare-train.jsonl.gz"
BUILTIN_VAL = CORPUS_DIR / "shakespeare-validation.jsonl.gz"
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".gz")
EOS_FALLBACK = "<|endoftext|>"


# ---------------------------------------------------------------------------- reading text


def resolve_files(spec: str) -> list[Path] | None:
    """Local files named by a path, glob or directory; None when `spec` is not local (an HF dataset id)."""
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True))
    elif Path(spec).is_dir():
        files = sorted(p for p in Path(spec).rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
    elif Path(spec).exists():
        files = [Path(spec)]
    else:
        return None
    files = [f for f in files if f.is_file()]
    if not files:
        raise UserError(f"data {spec!r}: no .txt, .jsonl or .parquet files found there")
    return files


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
            if text_field not in columns:
                raise UserError(f"{path}: no {text_field!r} column (has {columns}); set data.text_field")
            for batch in pq.ParquetFile(path).iter_batches(columns=[text_field]):  # a row group at a time
                yield from (t for t in batch.column(0).to_pylist() if t)
        elif name.endswith((".jsonl", ".json")):
            with opener(path, "rt", encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if line.strip():
                        record = json.loads(line)
                        if text_field not in record:
                            raise UserError(f"{path}:{i + 1}: no {text_field!r} field (set data.text_field)")
                        if record[text_field]:
                            yield record[text_field]
        else:  # plain text: one document per file
            with opener(path, "rt", encoding="utf-8") as f:
                text = f.read()
            if text.strip():
                yield text
    except (OSError, ValueError) as e:  # ValueError: JSON, Unicode and pyarrow (ArrowInvalid) errors
        raise UserError(f"{path}: unreadable ({e.__class__.__name__}: {e})") from e


def read_documents(
    spec: str, text_field: str = "text", max_docs: int | None = None, split: str = "train", revision: str | None = None
) -> Iterator[str]:
    """Documents from local files or, when `spec` is not a local path, an HF dataset id ("name" or "name:config")."""
    files = resolve_files(spec)
    if files is None:
        docs = _hf_documents(spec, text_field, split, revision)
    else:
        docs = (doc for f in files for doc in _read_file(f, text_field))
    for i, doc in enumerate(docs):
        if max_docs is not None and i >= max_docs:
            break
        yield doc


def _hf_documents(spec: str, text_field: str, split: str, revision: str | None = None) -> Iterator[str]:
    """Streamed (`streaming=True`): only the records a caller consumes are read, whatever the split's size."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True, revision=revision)
    except Exception as e:  # the hub is unreachable, the id or split is wrong, ...
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(
            f"{spec!r}: not a local path and not loadable as an HF dataset ({e.__class__.__name__}: {first})"
        ) from e
    for record in ds:
        if text_field not in record:
            raise UserError(
                f"{spec!r}: its records have no {text_field!r} field (fields: {sorted(record)}); set data.text_field"
            )
        if record[text_field]:
            yield record[text_field]


def _fingerprint(spec: str | None) -> list:
    if spec is None:
        return ["builtin"]
    files = resolve_files(spec)
    if files is None:
        return [spec]
    return [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in files]


# ---------------------------------------------------------------------------- tokenizer


def load_or_train_tokenizer(spec: str, texts, save_dir: Path):
    """An HF tokenizer dir/id, or `train:VOCAB`: a byte-level BPE trained on `texts` with `tokenizers`."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if spec.startswith("train:"):
        from tokenizers import ByteLevelBPETokenizer

        try:
            vocab = int(spec.split(":", 1)[1])
        except ValueError:
            raise UserError(f"data.tokenizer={spec!r}: expected train:VOCAB_SIZE, e.g. train:8192") from None
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            texts(), vocab_size=vocab, min_frequency=2, special_tokens=[EOS_FALLBACK], show_progress=False
        )
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe._tokenizer,
            eos_token=EOS_FALLBACK,
            bos_token=EOS_FALLBACK,
            unk_token=EOS_FALLBACK,
            pad_token=EOS_FALLBACK,
        )
    else:
        try:
            tok = AutoTokenizer.from_pretrained(spec)
        except Exception as e:
            raise UserError(
                f"data.tokenizer={spec!r}: not a tokenizer dir or reachable HF id ({e.__class__.__name__})"
            ) from e
        if tok.eos_token is None:
            raise UserError(f"data.tokenizer={spec!r} has no EOS token; documents need a separator")
    tok.model_max_length = int(1e9)  # we window the stream ourselves
    tok.save_pretrained(save_dir)
    return AutoTokenizer.from_pretrained(save_dir)


# ---------------------------------------------------------------------------- token files


@dataclass
class TokenData:
    train: np.ndarray  # memory-mapped token ids
    val: np.ndarray
    tokenizer: object
    meta: dict
    dir: Path

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)


_WORKER_TOKENIZER = None
CHUNK_DOCS = 256  # documents per task of the tokenising pool


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    from transformers import AutoTokenizer

    _WORKER_TOKENIZER = AutoTokenizer.from_pretrained(tokenizer_dir)


def _encode(texts: list[str], tokenizer=None, dtype: str = "uint32") -> np.ndarray:
    """Token ids of a chunk of documents, each followed by EOS, as one flat array."""
    tok = tokenizer or _WORKER_TOKENIZER
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(doc + [tok.eos_token_id], dtype=dtype) for doc in ids])


def _chunks(docs, size: int = CHUNK_DOCS):
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenise_to(path: Path, docs, tokenizer, dtype, num_proc: int = 1, tokenizer_dir: Path | None = None) -> int:
    """Write the token stream of `docs` to `path`; with num_proc > 1 a process pool encodes chunks in order.

    The pool's output is byte-identical to num_proc = 1 (imap keeps the order; tested). The progress bar
    counts the tokens written (the work done), not the documents read ahead of the encoder.
    """
    from tqdm.auto import tqdm

    n = 0
    dtype = np.dtype(dtype).name
    bar = tqdm(desc=f"tokenising {path.stem}", unit="tok", unit_scale=True, leave=False)
    with open(path, "wb") as f, bar:
        if num_proc <= 1:
            encoded = (_encode(chunk, tokenizer, dtype) for chunk in _chunks(docs))
            for arr in encoded:
                f.write(arr.tobytes())
                n += len(arr)
                bar.update(len(arr))
            return n
        import functools
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork after torch/tokenizers threads started
        with ctx.Pool(num_proc, initializer=_init_worker, initargs=(str(tokenizer_dir),)) as pool:
            for arr in pool.imap(functools.partial(_encode, dtype=dtype), _chunks(docs), chunksize=1):
                f.write(arr.tobytes())
                n += len(arr)
                bar.update(len(arr))
    return n


def is_token_dir(path: str | Path | None) -> bool:
    """A dir written by `nitp-train tokenize` (or a token cache): meta.json + train.bin + tokenizer/."""
    return path is not None and (Path(path) / "meta.json").is_file() and (Path(path) / "train.bin").is_file()


def _cache_key(cfg: DataConfig) -> dict:
    return {
        "path": _fingerprint(cfg.path),
        "validation": _fingerprint(cfg.validation) if cfg.validation or cfg.path is None else None,
        "val_fraction": cfg.val_fraction,
        "tokenizer": cfg.tokenizer,
        "text_field": cfg.text_field,
        "max_docs": cfg.max_docs,
        "revision": cfg.revision,
    }


def prepare_data(
    cfg: DataConfig, cache_dir: Path, is_main: bool = True, num_proc: int = 1, wait_s: float = 1800
) -> TokenData:
    """The token files of `cfg`: a pre-tokenised dir as it is, else tokenised once into the cache and reused.

    Called before any process group exists: the main process tokenises while the others wait for its
    meta.json on the file system (no collective can time out meanwhile); `nitp-train tokenize` does it
    ahead of time, in parallel.
    """
    if is_token_dir(cfg.path):
        out = Path(cfg.path)
        made_with = json.loads((out / "meta.json").read_text()).get("key", {}).get("tokenizer")
        if cfg.tokenizer is not None and made_with is not None and made_with != cfg.tokenizer:
            raise UserError(
                f"data {out} was tokenised with {made_with!r} but the config asks for {cfg.tokenizer!r}; "
                f"--set data.tokenizer={made_with} (or retokenise with nitp-train tokenize)"
            )
        return load_token_dir(out)
    key_src = _cache_key(cfg)
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(cache_dir) / f"tokens-{key}"
    if not (out / "meta.json").exists():
        if is_main:
            _build_token_dir(cfg, out, key_src, num_proc)
        else:  # torchrun stops this process if the main one fails
            deadline = time.monotonic() + wait_s
            while not (out / "meta.json").exists():
                if time.monotonic() > deadline:
                    raise UserError(
                        f"waited {wait_s:.0f} s for rank 0's token files in {out}: is the run dir on a file system "
                        f"every node sees? Tokenise ahead with nitp-train tokenize and pass --data TOKEN_DIR"
                    )
                time.sleep(1.0)
    return load_token_dir(out)


def tokenize(cfg: DataConfig, out: Path, num_proc: int = 1, overwrite: bool = False) -> TokenData:
    """`nitp-train tokenize`: the token files of `cfg` written to `out`, for `--data out` in run/pair."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if num_proc < 1:
        raise UserError(f"--num-proc {num_proc} must be >= 1")
    _build_token_dir(cfg, out, _cache_key(cfg), num_proc)
    return load_token_dir(out)


def load_token_dir(out: Path) -> TokenData:
    from transformers import AutoTokenizer

    try:
        meta = json.loads((out / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        train = np.memmap(out / "train.bin", dtype=dtype, mode="r")
        if len(train) != meta["train_tokens"]:
            raise ValueError(f"train.bin has {len(train)} tokens, meta.json says {meta['train_tokens']}")
        val = np.memmap(out / "val.bin", dtype=dtype, mode="r") if meta["val_tokens"] else np.zeros(0, dtype)
        tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"token dir {out} is unreadable ({e.__class__.__name__}: {e}); rerun nitp-train tokenize"
        ) from e
    return TokenData(train, val, tokenizer, meta, out)


def _build_token_dir(cfg: DataConfig, out: Path, key_src: dict, num_proc: int = 1) -> None:
    train_spec = cfg.path or str(BUILTIN_TRAIN)
    val_spec = cfg.validation or (str(BUILTIN_VAL) if cfg.path is None else None)
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _tokenise_into(cfg, tmp, key_src, train_spec, val_spec, num_proc)
    except BaseException:  # bad input or Ctrl-C: leave no half-built token dir behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _tokenise_into(
    cfg: DataConfig, tmp: Path, key_src: dict, train_spec: str, val_spec: str | None, num_proc: int = 1
) -> None:
    def texts():
        return read_documents(train_spec, cfg.text_field, cfg.max_docs, revision=cfg.revision)

    tokenizer = load_or_train_tokenizer(cfg.tokenizer or "train:8192", texts, tmp / "tokenizer")
    dtype = np.uint16 if len(tokenizer) <= 65535 else np.uint32
    n_train = _tokenise_to(tmp / "train.bin", texts(), tokenizer, dtype, num_proc, tmp / "tokenizer")
    if n_train == 0:
        raise UserError(f"data {train_spec!r}: empty corpus (no text found)")
    if val_spec is not None:
        val_docs = read_documents(val_spec, cfg.text_field, split="validation", revision=cfg.revision)
        n_val = _tokenise_to(tmp / "val.bin", val_docs, tokenizer, dtype, num_proc, tmp / "tokenizer")
    else:  # hold out the tail of the training stream: copy it out, then cut it off (memory stays flat)
        n_val = int(n_train * cfg.val_fraction)
        n_train -= n_val
        np.memmap(tmp / "train.bin", dtype=dtype, mode="r")[n_train:].tofile(tmp / "val.bin")
        os.truncate(tmp / "train.bin", n_train * np.dtype(dtype).itemsize)
    meta = {
        "train_tokens": n_train,
        "val_tokens": n_val,
        "dtype": np.dtype(dtype).name,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "train": train_spec,
        "validation": val_spec or f"last {cfg.val_fraction:.1%} of train",
        "revision": cfg.revision,
        "sha256_train": _sha256(tmp / "train.bin"),
        "key": key_src,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- windows


class WindowSampler:
    """Which windows of the token stream form each (step, rank, micro-step) batch.

    Stateless: sample i of the run is window perm_e[i mod W] with e = i // W and perm_e a
    permutation drawn from (seed, e). The data position is the step, so resume needs nothing else.
    A step's global batch is split into contiguous per-rank shares, then into micro-batches,
    so the world size only changes who computes which sequences.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.num_windows = len(tokens) // seq_len
        if self.num_windows < 1:
            raise UserError(
                f"corpus has {len(tokens)} tokens, fewer than one window of seq_len={seq_len}; use more data or a shorter seq_len"
            )
        self._perm_epoch, self._perm = -1, None

    def _window(self, i: int) -> int:
        import torch

        epoch = i // self.num_windows
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_windows, generator=g).numpy(), epoch
        return int(self._perm[i % self.num_windows])

    def sample_ids(self, step: int, global_batch: int) -> list[int]:
        return [self._window(step * global_batch + j) for j in range(global_batch)]

    def batch(self, window_ids: list[int]):
        import torch

        rows = [np.asarray(self.tokens[w * self.seq_len : (w + 1) * self.seq_len], dtype=np.int64) for w in window_ids]
        return torch.from_numpy(np.stack(rows))


def fixed_windows(tokens: np.ndarray, seq_len: int, n: int):
    """The first n windows of a held-out stream (validation CE and geometry probes), as a tensor."""
    import torch

    n = min(n, len(tokens) // seq_len)
    if n == 0:
        return None
    return torch.from_numpy(np.asarray(tokens[: n * seq_len], dtype=np.int64).reshape(n, seq_len))


def prefetched_batches(sampler: WindowSampler, steps: range, global_batch: int, rank: int, per_rank: int, micro: int,
                       device) -> Iterator[tuple[int, list[int], list]]:  # fmt: skip
    """(step, the step's global window ids, this rank's micro-batches on `device`), for each step.

    The next step's windows are read and stacked in a background thread while the current step
    computes; on CUDA they are pinned, so the copy to the GPU is asynchronous (non_blocking).
    """
    from concurrent.futures import ThreadPoolExecutor

    pin = getattr(device, "type", "cpu") == "cuda"

    def load(step: int):
        ids = sampler.sample_ids(step, global_batch)
        mine = ids[rank * per_rank : (rank + 1) * per_rank]
        micro_batches = [sampler.batch(mine[i : i + micro]) for i in range(0, per_rank, micro)]
        return ids, [b.pin_memory() for b in micro_batches] if pin else micro_batches

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(load, steps.start) if len(steps) else None
        for step in steps:
            ids, cpu_batches = future.result()
            if step + 1 < steps.stop:
                future = pool.submit(load, step + 1)
            yield step, ids, [b.to(device, non_blocking=True) for b in cpu_batches]
