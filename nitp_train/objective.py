"""The NITP objective (paper eq. 2-4) and its ablations, usable from any training loop.

    h_t     = last hidden state at t (hidden_states[-1]: after the final norm, what the LM head sees)
    z_{t+1} = sg[hidden_states[k]] at t+1      (k = target layer; 0 = embeddings, k = output of block k)
    L_NITP  = 1 - cos(P(h_t), z_{t+1})         averaged over positions where t and t+1 are real tokens
    L       = L_NTP + lambda * L_NITP

Usage:
    objective = NITPObjective(ObjectiveConfig(), hidden_size=d, num_layers=L)
    out = model(input_ids, attention_mask=mask, output_hidden_states=True)
    parts = objective(out.hidden_states, mask, step=step)
    loss = out.loss + parts.loss            # parts.loss is already lambda-weighted (0 before start_step)

Packed sequences: targets are taken across document boundaries exactly as NTP's labels are
(the EOS position predicts the first state of the next document). Both objectives see the same
pairs; pass an attention mask with zeros to exclude positions (padding).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

OBJECTIVES = ("ntp", "nitp", "cosine_reg")
LOSSES = ("cosine", "mse", "smooth_l1", "kl")
SHIFTS = ("next", "current")
PROJECTORS = ("swiglu", "linear", "none")
TARGET_NORMS = ("none", "rms")
PROJECTOR_FILE = "nitp_projector.safetensors"


@dataclass
class ObjectiveConfig:
    """Every ablation axis of the paper's Tables 3, 7 and 8. Defaults are the paper's NITP."""

    name: str = "nitp"  # ntp (baseline) | nitp | cosine_reg (Gao et al. 2019)
    lam: float = 1.0  # weight of the auxiliary loss; written `lambda` in YAML and --set
    target_layer: int | float = 0.2  # int k in 0..L (hidden_states index), or a depth fraction in (0, 1)
    shift: str = "next"  # next: h_t -> z_{t+1} | current: h_t -> z_t
    loss: str = "cosine"  # cosine | mse | smooth_l1 | kl (softmax over the feature dimension)
    stop_grad: bool = True  # detach the target z
    projector: str = "swiglu"  # swiglu (d -> 4d -> d) | linear (d -> d) | none (identity)
    projector_mult: int = 4  # SwiGLU intermediate size = projector_mult * d
    start_step: int = 0  # the auxiliary loss is off (weight 0) before this optimiser step
    # paper-silent choices a replicator may vary (defaults: this toolkit's behaviour before they existed)
    cross_document: bool = True  # a target may come from the next document of a packed window (as NTP's labels)
    target_norm: str = "none"  # none | rms: divide z by its root-mean-square over features before the loss
    freeze_projector: bool = False  # before start_step, the projector is not updated nor decayed by AdamW

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective.name={self.name!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"objective.loss={self.loss!r} is unknown; choose one of {', '.join(LOSSES)}")
        if self.shift not in SHIFTS:
            raise ValueError(f"objective.shift={self.shift!r} is unknown; choose one of {', '.join(SHIFTS)}")
        if self.projector not in PROJECTORS:
            raise ValueError(
                f"objective.projector={self.projector!r} is unknown; choose one of {', '.join(PROJECTORS)}"
            )
        if (
            isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not self.lam >= 0
        ):  # also catches NaN
            raise ValueError(f"objective.lambda={self.lam!r} must be a number >= 0")
        for name in ("stop_grad", "cross_document", "freeze_projector"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"objective.{name}={getattr(self, name)!r} must be true or false")
        if self.target_norm not in TARGET_NORMS:
            raise ValueError(
                f"objective.target_norm={self.target_norm!r} is unknown; choose one of {', '.join(TARGET_NORMS)}"
            )
        if isinstance(self.projector_mult, bool) or not isinstance(self.projector_mult, int) or self.projector_mult < 1:
            raise ValueError(
                f"objective.projector_mult={self.projector_mult!r} must be an int >= 1 (SwiGLU width = mult * d)"
            )
        if isinstance(self.start_step, bool) or not isinstance(self.start_step, int) or self.start_step < 0:
            raise ValueError(f"objective.start_step={self.start_step!r} must be an int >= 0")
        if isinstance(self.target_layer, bool) or not isinstance(self.target_layer, (int, float)):
            raise ValueError(
                f"objective.target_layer={self.target_layer!r} must be an int layer index or a fraction in (0, 1)"
            )
        if isinstance(self.target_layer, float) and not 0.0 < self.target_layer < 1.0:
            raise ValueError(
                f"objective.target_layer={self.target_layer} as a fraction must lie in (0, 1); give an int for a layer index"
            )

    @classmethod
    def from_dict(cls, d: dict) -> ObjectiveConfig:
        d = dict(d)
        if "lambda" in d:
            d["lam"] = d.pop("lambda")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown objective field(s) {unknown}; known: lambda, {', '.join(sorted(known - {'lam'}))}"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        return d


def resolve_target_layer(target_layer: int | float, num_layers: int) -> int:
    """hidden_states index of the target: an int is taken as is, a fraction f gives ceil(f * L).

    ceil gives the paper's 4 of 17, 5 of 24 and 6 of 28 layers for f = 0.2 (its 3 of 16 is the
    exception: presets carry the paper's ints). The 1e-9 keeps 0.2 * 25 = 5.000000000000001 at 5.
    """
    if isinstance(target_layer, float):
        k = max(1, math.ceil(target_layer * num_layers - 1e-9))
    else:
        k = int(target_layer)
    if not 0 <= k <= num_layers:
        raise ValueError(
            f"objective.target_layer={target_layer} is out of range: the model has hidden_states 0..{num_layers}"
        )
    return k


# ---------------------------------------------------------------------------- pure functions


def shifted_pairs(
    h_last: torch.Tensor,
    z_layer: torch.Tensor,
    attention_mask: torch.Tensor | None,
    shift: str = "next",
    boundaries: torch.Tensor | None = None,
):
    """(sources, targets, valid) aligned per position.

    next:    source h_t, target z_{t+1}, valid where t and t+1 are real tokens (last position never),
             and, given `boundaries` ([B, T], True at a document's last token: its EOS), t is not one.
    current: source h_t, target z_t,     valid where t is a real token.
    """
    if attention_mask is None:
        attention_mask = torch.ones(h_last.shape[:2], dtype=torch.bool, device=h_last.device)
    mask = attention_mask.bool()
    if shift == "next":
        valid = mask[:, :-1] & mask[:, 1:]
        if boundaries is not None:  # the EOS position's target would be the next document's first state
            valid = valid & ~boundaries[:, :-1].bool()
        return h_last[:, :-1], z_layer[:, 1:], valid
    if shift == "current":
        return h_last, z_layer, mask
    raise ValueError(f"shift={shift!r} is unknown; choose one of {', '.join(SHIFTS)}")


def alignment_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Per-position loss [..., d] x [..., d] -> [...]. Computed in float32 for stability under bf16."""
    pred, target = pred.float(), target.float()
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    if kind == "mse":
        return (pred - target).pow(2).mean(-1)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(-1)
    if kind == "kl":  # KL(softmax(z) || softmax(P(h))) over the feature dimension
        return F.kl_div(F.log_softmax(pred, -1), F.log_softmax(target, -1), reduction="none", log_target=True).sum(-1)
    raise ValueError(f"loss={kind!r} is unknown; choose one of {', '.join(LOSSES)}")


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `valid`; 0 (still differentiable) when nothing is valid."""
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def mean_pairwise_cosine(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine over pairs of distinct real tokens of each sequence, averaged over sequences.

    Exact and O(n d): with unit vectors u_i, sum_{i != j} u_i.u_j = |sum_i u_i|^2 - n.
    This is the Gao et al. (2019) cosine regulariser applied to last-layer states.
    """
    u = F.normalize(h.float(), dim=-1, eps=1e-8)
    if attention_mask is None:
        attention_mask = torch.ones(h.shape[:2], device=h.device)
    m = attention_mask.to(u.dtype)
    n = m.sum(1)
    s = (u * m.unsqueeze(-1)).sum(1)
    per_seq = (s.pow(2).sum(-1) - n) / (n * (n - 1)).clamp_min(1.0)
    has_pairs = (n >= 2).to(u.dtype)
    return (per_seq * has_pairs).sum() / has_pairs.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------- modules


class SwiGLUProjector(nn.Module):
    """P(h) = W2 (silu(W1 h) * W3 h), W1, W3: d -> m d, W2: m d -> d, no biases (12 d^2 params at m = 4)."""

    def __init__(self, d: int, mult: int = 4):
        super().__init__()
        self.w1 = nn.Linear(d, mult * d, bias=False)
        self.w3 = nn.Linear(d, mult * d, bias=False)
        self.w2 = nn.Linear(mult * d, d, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(h)) * self.w3(h))


def build_projector(kind: str, d: int, mult: int = 4) -> nn.Module:
    if kind == "swiglu":
        return SwiGLUProjector(d, mult)
    if kind == "linear":
        return nn.Linear(d, d, bias=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"projector={kind!r} is unknown; choose one of {', '.join(PROJECTORS)}")


class ObjectiveOutput(NamedTuple):
    loss: torch.Tensor  # lambda-weighted auxiliary loss to add to L_NTP (0 before start_step or for ntp)
    raw: torch.Tensor | None  # unweighted auxiliary loss (L_NITP or the mean pairwise cosine), None for ntp
    metrics: dict  # detached 0-d tensors for logging (read on the host only when the caller logs)


class NITPObjective(nn.Module):
    """Holds the projector; maps the model's hidden states to the auxiliary loss.

    `hidden_states` follows HF's output_hidden_states convention: a sequence of L + 1 tensors
    [batch, seq, d], index 0 = embeddings, index k = output of block k, index L = last.
    """

    def __init__(self, config: ObjectiveConfig, hidden_size: int, num_layers: int):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.target_layer = resolve_target_layer(config.target_layer, num_layers)
        uses_projector = config.name == "nitp"
        self.projector = build_projector(
            config.projector if uses_projector else "none", hidden_size, config.projector_mult
        )

    @property
    def needs_hidden_states(self) -> bool:
        return self.config.name != "ntp"

    def weight(self, step: int | None) -> float:
        """lambda, or 0 before start_step or for the plain NTP objective."""
        if self.config.name == "ntp" or (step is not None and step < self.config.start_step):
            return 0.0
        return self.config.lam

    def forward(
        self,
        hidden_states,
        attention_mask: torch.Tensor | None = None,
        step: int | None = None,
        boundaries: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        """`boundaries` ([B, T], True at EOS positions) is used only with cross_document=False."""
        cfg = self.config
        if cfg.name == "ntp":
            zero = hidden_states[-1].new_zeros((), dtype=torch.float32)
            return ObjectiveOutput(zero, None, {})
        h_last = hidden_states[-1]
        if cfg.name == "cosine_reg":
            raw = mean_pairwise_cosine(h_last, attention_mask)
            return ObjectiveOutput(self.weight(step) * raw, raw, {"loss_cosine_reg": raw.detach()})
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(
                f"expected {self.num_layers + 1} hidden states (embeddings + {self.num_layers} blocks), got {len(hidden_states)}"
            )
        z = hidden_states[self.target_layer]
        if cfg.stop_grad:
            z = z.detach()
        if cfg.target_norm == "rms":  # scale-free targets for the scale-sensitive losses (cosine is unaffected)
            z = z * torch.rsqrt(z.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(z.dtype)
        if not cfg.cross_document and boundaries is None:
            raise ValueError("objective.cross_document=false needs the document boundaries (EOS positions)")
        src, tgt, valid = shifted_pairs(
            h_last, z, attention_mask, cfg.shift, None if cfg.cross_document else boundaries
        )
        pred = self.projector(src)
        raw = masked_mean(alignment_loss(pred, tgt, cfg.loss), valid)
        metrics = {"loss_nitp": raw.detach()}
        if cfg.loss != "cosine":  # the paper's cosine s, comparable across loss types
            with torch.no_grad():
                metrics["nitp_cos"] = masked_mean(1 - alignment_loss(pred, tgt, "cosine"), valid)
        return ObjectiveOutput(self.weight(step) * raw, raw, metrics)

    # -- saved beside each checkpoint, never part of the exported model

    def save(self, checkpoint_dir: str | Path, state_dict: dict | None = None) -> Path:
        """Write nitp_projector.safetensors; `state_dict` overrides ours (e.g. gathered from FSDP shards)."""
        from safetensors.torch import save_file

        meta = {
            "config": json.dumps(self.config.to_dict()),
            "hidden_size": str(self.hidden_size),
            "num_layers": str(self.num_layers),
            "target_layer": str(self.target_layer),
        }
        path = Path(checkpoint_dir) / PROJECTOR_FILE
        state = {k: v.detach().cpu().contiguous() for k, v in (state_dict or self.state_dict()).items()}
        save_file(state, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, checkpoint_dir: str | Path, map_location: str = "cpu") -> NITPObjective:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(checkpoint_dir) / PROJECTOR_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no NITP projector here (only NITP-arm checkpoints have one)")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        config = ObjectiveConfig.from_dict(json.loads(meta["config"]))
        obj = cls(config, int(meta["hidden_size"]), int(meta["num_layers"]))
        obj.load_state_dict(load_file(str(path), device=map_location))
        return obj.to(map_location)  # load_state_dict copies into the CPU-built module
