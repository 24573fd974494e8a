"""Loading any HF checkpoint (trainer output, causal LM or encoder) for analysis."""

from __future__ import annotations

from pathlib import Path

from nitp_train.errors import UserError


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(path: str | Path, device: str | None = None, dtype: str = "float32"):
    """(model, tokenizer) for a checkpoint dir, in eval mode; causal LMs first, encoders otherwise.

    Hidden states are read through `output_hidden_states=True`, index 0 = embeddings,
    index L = last entry (after the final norm for Qwen2/Llama-style decoders).
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise UserError(f"{path}: not an HF model dir (no config.json); give a checkpoint dir such as runs/x/nitp/checkpoints/step-000200")
    torch_dtype = getattr(torch, dtype)
    archs = AutoConfig.from_pretrained(path).architectures or []
    # encoders (e.g. BertModel) load as themselves: as causal LMs they would get a fresh, unused head
    causal = not archs or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    try:
        model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path, dtype=torch_dtype)
    except ValueError:  # no causal-LM class for this architecture: an encoder
        model = AutoModel.from_pretrained(path, dtype=torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: no tokenizer saved with the model ({e.__class__.__name__}); save one with tokenizer.save_pretrained") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(pick_device(device)).eval()
    return model, tokenizer
