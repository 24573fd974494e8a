"""Shared fixtures: real data from ../shared/data and tiny real HF checkpoints built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("NITP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set NITP_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shared_data) -> Path:
    """A tiny randomly initialised Qwen2 causal LM with the GPT-2 tokenizer, saved as an HF dir."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
