"""Frozen sentence embeddings from any HF model, as an mteb 2.x encoder (the paper's Appendix E).

    e(x) = normalize( sum_t m_t * H^(k)_t / sum_t m_t )

H^(k) = hidden_states[k] of the model (HF convention: 0 = embeddings, -1 = last entry, which
for Qwen2/Llama-style decoders is after the final norm), m = attention mask of the valid
tokens. Nothing is trained. Texts are sorted by token length before batching so a batch
holds texts of similar length (little padding); embeddings come back in input order.
A text with no token at all (the empty string under GPT-2/Qwen tokenizers, which add no
special tokens) gets the zero vector: it is never run through the model.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nitp_eval.mteb_eval import import_mteb

import_mteb()  # before any `from mteb ...`: see import_mteb
from mteb.models.abs_encoder import AbsEncoder  # noqa: E402
from mteb.models.model_meta import ModelMeta, ScoringFunction  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from nitp_train.errors import UserError  # noqa: E402

PADDING_SIDES = ("right", "left")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, T, d) over the positions where `mask` (B, T) is 1.

    Padded positions are zeroed with `where`, not multiplied by 0, so that NaNs a model may
    leave at fully masked positions (left padding) cannot leak into the mean. A row with no
    valid token gets the zero vector.
    """
    keep = mask.bool().unsqueeze(-1)
    summed = torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(1)
    count = keep.sum(1).clamp(min=1).to(hidden.dtype)
    return summed / count


def position_limit(config) -> int | None:
    """Most tokens the model can take (learned/absolute position tables), or None if unstated."""
    config = config.get_text_config()
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_settings(config, *, layer: int, max_length: int, padding_side: str) -> int:
    """Validate the settings, against a model config when given (no weights needed: the CLI checks
    before loading any model); returns max_length capped at the model's position limit (beyond it
    GPT-2/BERT-style position tables raise IndexError mid-run)."""
    if padding_side not in PADDING_SIDES:
        raise UserError(f"--padding-side {padding_side}: unknown; choose one of {', '.join(PADDING_SIDES)}")
    if max_length < 1:
        raise UserError(f"--max-length {max_length}: must be at least 1")
    if config is None:
        return max_length
    n_states = config.get_text_config().num_hidden_layers + 1
    if not -n_states <= layer < n_states:
        raise UserError(
            f"--layer {layer}: out of range for a model with {n_states - 1} layers; "
            f"give 0..{n_states - 1} (0 = embeddings) or -1 for the last layer"
        )
    limit = position_limit(config)
    return min(max_length, limit) if limit else max_length


class MeanPoolEncoder(AbsEncoder):
    """mteb encoder: mean-pooled (valid tokens only), L2-normalised hidden states of layer `layer`.

    Args:
        model, tokenizer: a loaded HF model (causal LM or encoder) and its tokenizer.
        layer: hidden_states index; -1 = last (the paper's choice), 0 = embeddings.
        max_length: texts are truncated to this many tokens (capped at the model's position
            limit, max_position_embeddings or n_positions; self.max_length is what is used).
        batch_size: texts per forward pass (mteb's encode_kwargs["batch_size"] overrides it).
        padding_side: "right" (default) or "left"; under left padding position ids are
            computed from the mask so each text sees the positions it would see alone.
        normalize: L2-normalise the pooled vectors (the paper's choice).
        name: the model name recorded in mteb's metadata.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        layer: int = -1,
        max_length: int = 512,
        batch_size: int = 32,
        padding_side: str = "right",
        normalize: bool = True,
        name: str = "nitp/model",
    ):
        self.max_length = check_settings(model.config, layer=layer, max_length=max_length, padding_side=padding_side)
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.batch_size = batch_size
        self.padding_side = padding_side
        self.normalize = normalize
        # The backbone alone: a causal LM's head would compute (B, T, vocab) logits for nothing.
        self.backbone = model.base_model
        self._takes_positions = "position_ids" in inspect.signature(self.backbone.forward).parameters
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": name,
                "revision": "local",
                "embed_dim": model.config.get_text_config().hidden_size,
                "max_tokens": self.max_length,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"],
            }
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | None = None, dtype: str = "float32", **kwargs):
        """Load a checkpoint dir with nitp_eval.models.load_model and wrap it."""
        from nitp_eval.models import load_model

        model, tokenizer = load_model(path, device=device, dtype=dtype)
        kwargs.setdefault("name", f"nitp/{Path(path).name}")
        return cls(model, tokenizer, **kwargs)

    @torch.no_grad()
    def embed(
        self, texts: list[str], batch_size: int | None = None, show_progress_bar: bool = True, desc: str = "encoding"
    ) -> np.ndarray:
        """(len(texts), d) float32 embeddings, in the order of `texts`."""
        batch_size = batch_size or self.batch_size
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        # longest first: memory peaks early. Texts with no token stay out (a batch of only such
        # texts has nothing to run) and keep their zero row.
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: -len(ids[i]))
        device = next(self.model.parameters()).device
        out = np.zeros((len(ids), self.mteb_model_meta.embed_dim), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc=desc, disable=not show_progress_bar, leave=False):
            idx = order[s : s + batch_size]
            batch = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in idx]}, padding=True, padding_side=self.padding_side, return_tensors="pt"
            )
            input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            kwargs: dict[str, Any] = {}
            if self._takes_positions:  # count positions over valid tokens only (matters under left padding)
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=mask, output_hidden_states=True, **kwargs
            ).hidden_states[self.layer]
            pooled = mean_pool(hidden.float(), mask)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.cpu().numpy()
        return out

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs) -> np.ndarray:
        """mteb's EncoderProtocol: no prompts or instructions, the texts as they are."""
        texts = [t for batch in inputs for t in batch["text"]]
        return self.embed(
            texts,
            batch_size=kwargs.get("batch_size"),
            show_progress_bar=kwargs.get("show_progress_bar", True),
            desc=f"{task_metadata.name} {hf_split}",
        )
