"""Training FLOPs per token (paper Appendix G), and an exact count for the actual config.

Paper approximation (6 x params per token, every layer an MoE layer with k = top_k + shared experts):
    baseline = L (18 d^2 + 18 k d d_e) + 6 V d          (dense: d_e = FFN size, k = 1)
    NITP     = 72 d^2 (SwiGLU projector d -> 4d -> d) + 18 d (cosine)
The exact count walks the real config: GQA projections, the dense first layer(s), routed +
shared experts and router, attention scores over the causal context, the LM head; the NITP
projector uses its real width. All counts are multiply-adds x 2 x 3 (forward + backward).
The exact count's attention scores cover the causal context (average (T+1)/2 keys per query);
torchtitan counts all T keys, so its numbers (`torchtitan_baseline`) are higher by up to ~1.27x at
long context (the attention share doubles) and its MFU by the same factor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nitp_train.presets import Preset


@dataclass(frozen=True)
class FlopsReport:
    preset: str
    seq_len: int
    paper_baseline: float
    paper_nitp_extra: float
    exact_baseline: float
    exact_nitp_extra: float
    exact_parts: dict
    # torchtitan's convention for the same config (for MFU comparisons): 6 x the weights a token passes
    # through (embedding lookup excluded, LM head included) + 12 L H d_head T attention, with no causal halving
    torchtitan_baseline: float = 0.0

    @property
    def paper_overhead(self) -> float:
        return self.paper_nitp_extra / self.paper_baseline

    @property
    def exact_overhead(self) -> float:
        return self.exact_nitp_extra / self.exact_baseline

    def to_dict(self) -> dict:
        return {**asdict(self), "paper_overhead": self.paper_overhead, "exact_overhead": self.exact_overhead}


def _dims(hf: dict, vocab_size: int | None):
    d = hf["hidden_size"]
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d // heads
    return d, heads, hf.get("num_key_value_heads") or heads, head_dim, hf.get("vocab_size", vocab_size)


def flops_per_token(
    preset: Preset,
    seq_len: int | None = None,
    vocab_size: int | None = None,
    projector: str = "swiglu",
    projector_mult: int = 4,
) -> FlopsReport:
    """Per-token training FLOPs of the NTP baseline and of NITP's extra work for a preset."""
    hf = preset.hf
    seq_len = seq_len or preset.train.get("seq_len", 8192)
    d, heads, kv_heads, head_dim, V = _dims(hf, vocab_size)
    if V is None:
        raise ValueError(f"preset {preset.name} has no fixed vocab_size: pass vocab_size")
    L = hf["num_hidden_layers"]
    moe = hf.get("num_experts", 0) > 0
    top_k = hf.get("num_experts_per_tok", 0)
    shared = 1 if moe and hf.get("shared_expert_intermediate_size", 0) > 0 else 0
    d_e = hf["moe_intermediate_size"] if moe else hf["intermediate_size"]
    k = top_k + shared if moe else 1

    paper_baseline = L * (18 * d**2 + 18 * k * d * d_e) + 6 * V * d
    paper_extra = 72 * d**2 + 18 * d

    # exact: 6 x (weights a token passes through) + attention scores/values over the causal context
    attn_proj = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2  # q, o + k, v
    attn_scores = 2 * heads * head_dim * (seq_len + 1) / 2  # QK^T and AV, average causal context
    dense_layers = [i for i in range(L) if not moe or i in (hf.get("mlp_only_layers") or [])]
    n_dense = len(dense_layers)
    dense_ffn = 3 * d * hf["intermediate_size"]
    moe_ffn = (
        3 * d * (top_k * hf.get("moe_intermediate_size", 0) + shared * hf.get("shared_expert_intermediate_size", 0))
    )
    router = d * hf.get("num_experts", 0) + (d if shared else 0)  # router + sigmoid gate of the shared expert
    parts = {
        "attention_projections": 6 * L * attn_proj,
        "attention_scores": 6 * L * attn_scores,
        "dense_ffn": 6 * n_dense * dense_ffn,
        "moe_ffn": 6 * (L - n_dense) * (moe_ffn + router),
        "lm_head": 6 * V * d,
    }
    exact_baseline = float(sum(parts.values()))
    torchtitan_baseline = exact_baseline - parts["attention_scores"] + 12 * L * heads * head_dim * seq_len
    proj_params = {"swiglu": 3 * projector_mult * d * d, "linear": d * d, "none": 0}[projector]
    exact_extra = 6 * proj_params + 18 * d
    return FlopsReport(
        preset.name,
        seq_len,
        float(paper_baseline),
        float(paper_extra),
        exact_baseline,
        float(exact_extra),
        {k_: float(v) for k_, v in parts.items()},
        float(torchtitan_baseline),
    )
