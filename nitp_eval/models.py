"""Loading any HF checkpoint (trainer output, causal LM or encoder) for analysis."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from nitp_train.errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")
FAST_FLOAT64_GPUS = ("A100", "A800", "H100", "H200", "H800", "GH200", "B200", "MI250", "MI300")  # fp64 at >= 1/2 fp32


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: bfloat16 weights on a CUDA GPU that has it (half the memory, tensor cores), float32 on CPUs."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: unknown; choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def stats_device(option: str, model_device: str) -> str:
    """Where float64 statistics are accumulated: `auto` = the model's device, except GPUs whose float64
    is a small fraction of their float32 (consumer and inference GPUs), where the CPU is faster."""
    import torch

    if option != "auto":
        return pick_device(option)
    dev = torch.device(model_device)
    if dev.type == "cuda" and not any(name in torch.cuda.get_device_name(dev) for name in FAST_FLOAT64_GPUS):
        return "cpu"
    return model_device


def pick_device(device: str | None = None) -> str:
    """`device` if this machine has it (checked), else cuda when available, else cpu."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA device; use --device cpu")
    return device


def load_model(path: str | Path, device: str | None = None, dtype: str = "auto"):
    """(model, tokenizer) for a checkpoint dir, in eval mode; causal LMs first, encoders otherwise.

    Hidden states are read through `output_hidden_states=True`, index 0 = embeddings,
    index L = last entry (after the final norm for Qwen2/Llama-style decoders).
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(
            f"{path}: not an HF model dir (no config.json); give a checkpoint dir such as runs/x/nitp/checkpoints/step-000200"
        )
    device = pick_device(device)  # before loading: a bad device should not cost a model load
    torch_dtype = getattr(torch, resolve_dtype(dtype, device))
    from safetensors import SafetensorError

    try:
        with _no_loading_bar():  # transformers' per-load bar on stderr would break one-line errors after it
            # encoders (e.g. BertModel) load as themselves: as causal LMs they would get a fresh, unused head
            causal = is_causal_lm(AutoConfig.from_pretrained(path))
            try:
                model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path, dtype=torch_dtype)
            except ValueError:  # no causal-LM class for this architecture: an encoder
                model = AutoModel.from_pretrained(path, dtype=torch_dtype)
    # no weights, unknown model_type, a truncated or corrupt weights file
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise UserError(
            f"{path}: cannot load the model ({e.__class__.__name__}: {first_line(e)}); "
            "check that the checkpoint was saved completely (save_pretrained) or re-export it"
        ) from e
    check_finite_weights(model, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is None or len(tokenizer) <= 1:  # transformers may build an empty tokenizer from no files
        raise UserError(f"{path}: no tokenizer saved with the model; save one there with tokenizer.save_pretrained")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return model, tokenizer


def load_projector(checkpoint: Path, last: int):
    """The NITP projector saved beside a checkpoint (an NITPObjective), or None; checked against the model's depth."""
    from safetensors import SafetensorError

    from nitp_train.objective import PROJECTOR_FILE, NITPObjective

    path = Path(checkpoint) / PROJECTOR_FILE
    if not path.exists():
        return None
    try:
        projector = NITPObjective.load(checkpoint)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise UserError(
            f"{path}: unreadable ({e.__class__.__name__}: {first_line(e)}); the file is cut short or corrupt: "
            "restore it, or remove it to analyse the model without its projector"
        ) from e
    if projector.num_layers != last:
        raise UserError(f"{path}: made for {projector.num_layers} layers, the model has {last}")
    return projector


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: errors stay one line."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else e.__class__.__name__)[:limit]


def is_causal_lm(config) -> bool:
    """Whether an HF config describes a causal LM (no `architectures` recorded: assume one, as the trainer saves)."""
    archs = getattr(config, "architectures", None) or []
    return not archs or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def check_finite_weights(model, path) -> None:
    """UserError naming the tensors (and counts) of non-finite weights: every result would be NaN."""
    import torch

    bad = [
        (name, int((~torch.isfinite(p)).sum())) for name, p in model.named_parameters() if not torch.isfinite(p).all()
    ]
    if bad:
        where = ", ".join(f"{name}: {n}" for name, n in bad[:3]) + (
            f", ... ({len(bad)} tensors)" if len(bad) > 3 else ""
        )
        raise UserError(
            f"{path}: the weights hold non-finite values (NaN or inf) ({where}); the checkpoint is broken "
            "(e.g. a diverged run): evaluate an earlier checkpoint"
        )


@contextmanager
def _no_loading_bar():
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def gguf_to_hf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a GGUF causal LM into a plain HF model dir (config, safetensors, tokenizer); returns out_dir.

    transformers loads GGUF files (`gguf_file=`, needs `pip install gguf`) but refuses to
    `save_pretrained` the result, so a plain model is rebuilt from its config and given the
    dequantised weights. Written beside `out_dir` and moved into place: an interrupted call
    leaves no half dir. Used for SmolLM2-135M (docs/geometry.md, "A real model: SmolLM2").
    """
    import os
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    if not gguf_file.is_file():
        raise UserError(f"{gguf_file}: no such GGUF file")
    kw = {"gguf_file": gguf_file.name}
    with _no_loading_bar():
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kw)
        tok = AutoTokenizer.from_pretrained(gguf_file.parent, **kw)
        cfg = AutoConfig.from_pretrained(gguf_file.parent, **kw)
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(loaded.state_dict())
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out_dir)
    return out_dir
