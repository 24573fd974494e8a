"""Next-token cross-entropy without the full-vocabulary logits: the LM head and the loss, chunk by chunk.

A causal LM's logits are [tokens, vocab] (at 8192 tokens and Qwen2's 151,936 rows, 5 GB in fp32), and a
plain loss keeps them, their fp32 copy and their gradient alive through the backward. Here the head is
applied to `chunk_tokens` positions at a time; each chunk's loss and its gradients with respect to the
hidden states and the head's weight are computed in the forward pass (the softmax minus the one-hot target
is the gradient of the logits), and the chunk's logits are freed before the next one. So at most one
chunk's logits exist, in forward and backward, and no matmul is recomputed. Device-agnostic torch; the
backward scales the stored gradients by the incoming one. Under autocast the matmuls run at the autocast
dtype and the softmax in fp32, as HF's loss does (tests/test_loss.py checks both against HF's own loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # HF's label for positions without a target (padding)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over rows of CE(hidden @ weight.T, targets) (rows whose target is IGNORE_INDEX count 0)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens, grads):
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):  # the dtypes below are explicit
            w = weight.to(dtype)
            total = hidden.new_zeros((), dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if grads else None
            grad_weight = None
            for start in range(0, hidden.shape[0], chunk_tokens):
                x = hidden[start : start + chunk_tokens].to(dtype)
                t = targets[start : start + chunk_tokens]
                valid = t != IGNORE_INDEX
                safe = torch.where(valid, t, 0).unsqueeze(1)
                logp = torch.log_softmax(F.linear(x, w).float(), dim=-1)  # fp32; the logits are freed here
                total -= (logp.gather(1, safe).squeeze(1) * valid).sum()
                if grads:  # d loss / d logits = softmax - one_hot(target), in place; ignored rows masked in [rows, d]
                    g = logp.exp_().scatter_add_(1, safe, torch.full_like(safe, -1.0, dtype=logp.dtype)).to(dtype)
                    keep = valid.unsqueeze(1).to(dtype)
                    grad_hidden[start : start + chunk_tokens] = (g @ w) * keep
                    part = g.t() @ (x * keep)
                    grad_weight = part.float() if grad_weight is None else grad_weight.add_(part)
                    del g, part
                del logp  # before the next chunk's logits exist: one chunk's at a time
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = grad_hidden * grad_out.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Mean next-token CE of a causal LM from its last hidden states, as HF's `ForCausalLMLoss` defines it.

    hidden [B, T, d] (what the LM head sees), weight [V, d] (the head, no bias), labels [B, T]: position t
    predicts labels[:, t + 1]; IGNORE_INDEX labels are left out of the mean (0 when every label is).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1")
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)  # as HF shifts: no copy of hidden
    grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)  # not under no_grad (eval)
    total = _ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets, chunk_tokens, grads)
    return total / (targets != IGNORE_INDEX).sum().clamp_min(1)


def causal_lm_loss(model, input_ids: torch.Tensor, chunk_tokens: int, **kwargs):
    """(next-token CE on `input_ids`, the model's output) for an HF causal LM; labels = the inputs.

    chunk_tokens > 0: the model runs with `logits_to_keep=1` (its head sees one position) and returns its
    hidden states; the head and the loss then run chunk by chunk (`chunked_cross_entropy`). 0: HF's own
    loss over the full logits. The CE never includes an MoE model's load-balancing loss (`out.aux_loss`
    when `output_router_logits=True`; the caller adds it).
    """
    if not chunk_tokens:
        out = model(input_ids=input_ids, labels=input_ids, **kwargs)
        loss = out.loss
        if getattr(out, "aux_loss", None) is not None:  # HF adds coef * load-balancing loss to out.loss
            loss = loss - model.config.router_aux_loss_coef * out.aux_loss
        return loss, out
    kwargs["output_hidden_states"] = True
    out = model(input_ids=input_ids, logits_to_keep=1, **kwargs)
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("chunked cross-entropy supports an LM head without bias (set ce_chunk_tokens=0)")
    return chunked_cross_entropy(out.hidden_states[-1], head.weight, input_ids, chunk_tokens), out
