"""The trained module (backbone + objective), built on the meta device and initialised from the seed alone.

The model is created without memory (`meta`), sharded if FSDP is on, and only then materialised
(`to_empty`) and initialised. Initialisation goes module by module: each module's parameters are drawn
in full on the CPU from an RNG seeded by (seed, module name), with the architecture's own rule
(transformers' `_init_weights`; the projector's `reset_parameters`), and each process keeps only its
shard. So no process ever holds more than its shard plus one module's full weights, and the initial
weights are a pure function of the seed: the same for every world size and parallel layout, and for
both arms of a pair (the projector lives under its own names, so it cannot move the backbone's draws).
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
from torch import nn

from nitp_train.config import TrainConfig
from nitp_train.errors import UserError
from nitp_train.loss import causal_lm_loss
from nitp_train.objective import NITPObjective, resolve_target_layer
from nitp_train.presets import Preset, get_preset


class TrainModule(nn.Module):
    """Backbone and objective in one module, so DDP/FSDP see every trained parameter.

    forward returns the total loss and the parts to log, all as device tensors (never read on the host here).
    """

    def __init__(self, model, objective: NITPObjective, ce_chunk_tokens: int = 0):
        super().__init__()
        self.model = model
        self.objective = objective
        self.ce_chunk_tokens = ce_chunk_tokens  # 0: HF's loss over the full logits (nitp_train.loss)
        self.is_moe = getattr(model.config, "num_experts", 0) > 0
        self.eos_token_id = model.config.eos_token_id  # documents are joined with it (nitp_train.data)

    def forward(self, input_ids: torch.Tensor, step: int):
        kwargs = {"output_router_logits": True} if self.is_moe else {}
        if self.objective.needs_hidden_states:
            kwargs["output_hidden_states"] = True
        loss_ntp, out = causal_lm_loss(self.model, input_ids, self.ce_chunk_tokens,
                                       attention_mask=causal_masks(self.model.config), use_cache=False, **kwargs)  # fmt: skip
        total = loss_ntp
        parts = {}
        if self.is_moe:  # the architecture's load-balancing loss, logged apart from the CE
            total = total + self.model.config.router_aux_loss_coef * out.aux_loss
            parts["loss_router"] = out.aux_loss.detach()
        aux = None
        if self.objective.needs_hidden_states:
            boundaries = input_ids == self.eos_token_id if not self.objective.config.cross_document else None
            aux = self.objective(out.hidden_states, None, step, boundaries=boundaries)
            total = total + aux.loss
        parts.update({"loss_ntp": loss_ntp.detach(), "loss_total": total.detach()})
        if aux is not None:
            parts.update(aux.metrics)
        return total, parts


def causal_masks(config) -> dict | None:
    """Packed full windows need only the causal mask, which SDPA applies itself (`is_causal`): giving HF's
    per-layer-type mask mapping as {"full_attention": None} skips its mask construction, which reads the
    position ids on the host (a sync per forward). None (HF builds the masks) when a layer type differs, and
    for MoE models, whose load-balancing loss takes the attention mask as a tensor (their expert dispatch
    reads the routing on the host anyway)."""
    types = set(getattr(config, "layer_types", None) or ["full_attention"])
    moe = getattr(config, "num_experts", 0) > 0
    return {"full_attention": None} if types == {"full_attention"} and not moe else None


def resolved_preset(cfg: TrainConfig, vocab_size: int) -> Preset:
    """The preset with the run's overrides and vocabulary applied (what FLOPs and the planner count)."""
    import dataclasses

    preset = get_preset(cfg.model.preset)
    hf = {**preset.hf, **cfg.model.hf_overrides}
    hf.setdefault("vocab_size", vocab_size)
    return dataclasses.replace(preset, hf=hf)


class SizedVocab:
    """A tokenizer stand-in of a given size, for building a model without data (benchmarks, planning):
    hf_config reads only its length and special-token ids."""

    def __init__(self, n: int):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, 0, 0, 0

    def __len__(self) -> int:
        return self.n


def hf_config(cfg: TrainConfig, tokenizer=None):
    """The transformers config of the run, checked against seq_len and the objective's target layer.

    Without a tokenizer (a check before tokenising) the vocabulary is the preset's or a placeholder.
    """
    preset = get_preset(cfg.model.preset)
    special = {}
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    try:
        config = preset.hf_config(vocab_size=len(tokenizer) if tokenizer is not None else 2, **special,
                                  **cfg.model.hf_overrides)  # fmt: skip
    except (TypeError, ValueError) as e:
        raise UserError(f"model.hf_overrides: {e}") from e
    if tokenizer is not None and config.vocab_size < len(tokenizer):
        raise UserError(
            f"tokenizer has {len(tokenizer)} tokens but preset {preset.name} has vocab_size {config.vocab_size}; use a smaller tokenizer"
        )
    if cfg.seq_len > config.max_position_embeddings:
        raise UserError(
            f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings={config.max_position_embeddings}; "
            f"lower seq_len or --set model.hf_overrides.max_position_embeddings={cfg.seq_len}"
        )
    try:
        resolve_target_layer(cfg.objective.target_layer, config.num_hidden_layers)
    except ValueError as e:
        raise UserError(str(e)) from e
    return config


def build_meta_module(cfg: TrainConfig, config) -> TrainModule:
    """Backbone + objective with every parameter on the meta device (no memory); buffers are real (small)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
        try:
            objective = NITPObjective(cfg.objective, config.hidden_size, config.num_hidden_layers)
        except ValueError as e:
            raise UserError(str(e)) from e
    if config.tie_word_embeddings:
        model.tie_weights()  # accelerate's meta constructor unties them
    if cfg.activation_checkpointing:  # per decoder layer; non-reentrant works under FSDP2 and torch.compile
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return TrainModule(model, objective, cfg.ce_chunk_tokens)


@contextlib.contextmanager
def _swap_on_conversion():
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def _module_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _full_init(reference: TrainModule, name: str, module: nn.Module, seed: int) -> None:
    """Materialise `module`'s own parameters (not its children's) on the CPU and draw them from (seed, name)."""
    with _swap_on_conversion():
        module.to_empty(device="cpu", recurse=False)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(_module_seed(seed, name))
        if name == "model" or name.startswith("model."):
            reference.model._init_weights(module)  # the architecture's own rule (std, ones for norms, zero pad row)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()  # torch's default for the projector's Linear layers


def _copy_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full tensor into a parameter: whole, or this process's FSDP shard of it (no communication)."""
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    if not isinstance(param, DTensor):
        param.copy_(full)
        return
    mesh, placements = param.device_mesh, param.placements
    if len(placements) == 1 and isinstance(placements[0], Shard):  # FSDP2: torch.chunk along one dim
        chunks = full.chunk(mesh.size(), dim=placements[0].dim)
        if len(chunks) == mesh.size():  # this rank's chunk is a view: no second copy of the shard
            param.to_local().copy_(chunks[mesh.get_local_rank()])
            return
    param.to_local().copy_(distribute_tensor(full, mesh, placements, src_data_rank=None).to_local())


def materialise(module: TrainModule, cfg: TrainConfig, config, device: torch.device, init: bool = True) -> str:
    """Allocate the (possibly sharded) parameters on `device`; with `init`, draw them from the seed.

    Returns the sha256 of the initial weights (over full tensors, so equal for every layout), or "" without init.
    """
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    with _swap_on_conversion():  # keeps tied parameters (embeddings / LM head) one object
        module.to_empty(device=device)
    with torch.no_grad():
        for n, b in module.named_buffers():  # to_empty emptied them too; their values came from the constructor
            b.copy_(buffers[n])
    if not init:
        return ""
    reference = build_meta_module(cfg, config)  # an unsharded meta twin: one module materialised at a time
    targets = dict(module.named_parameters())
    digests = {}
    for name, ref_module in reference.named_modules():
        if not any(f"{name}.{p}" in targets for p, _ in ref_module.named_parameters(recurse=False)):
            continue  # no parameters of its own, or only a tied one initialised under its first name
        _full_init(reference, name, ref_module, cfg.seed)
        with torch.no_grad():
            for pname, full in ref_module.named_parameters(recurse=False):  # the materialised ones
                fqn = f"{name}.{pname}"
                if fqn not in targets:  # a tied weight: initialised under its first name
                    continue
                _copy_into(targets[fqn], full)
                digests[fqn] = tensor_sha256(full)
        with _swap_on_conversion():
            ref_module.to_empty(device="meta", recurse=False)  # free it before the next module
    return combine_digests(digests, prefix="model.")


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def combine_digests(digests: dict[str, str], prefix: str) -> str:
    """One hash over the named tensors under `prefix` (the backbone: what pairs and layouts must share)."""
    h = hashlib.sha256()
    for name in sorted(k for k in digests if k.startswith(prefix)):
        h.update(name.encode())
        h.update(digests[name].encode())
    return h.hexdigest()


def weights_sha256(model: nn.Module, prefix: str = "") -> str:
    """The same hash as `materialise` returns, recomputed from a plain (unsharded) module's parameters."""
    digests = {f"{prefix}{n}": tensor_sha256(p) for n, p in model.named_parameters()}
    return combine_digests(digests, prefix=prefix)


def fused_adamw(device: torch.device | None) -> bool | None:
    return True if device is not None and device.type in ("cuda", "cpu") else None


def make_optimizer(cfg: TrainConfig, module: nn.Module, device: torch.device | None = None):
    """AdamW (no decay on norms and biases) and the WSD schedule over the run's LR horizon, `cfg.steps`.

    Fused AdamW on CUDA and CPU: one kernel per step, and it honours `opt.found_inf` (set by the loop), so
    a step with a non-finite loss or gradient is skipped on the device without a host read.
    """
    from transformers import get_wsd_schedule

    decay, no_decay = [], []
    for p in getattr(module, "model", module).parameters():  # a TrainModule's backbone, or any module
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    objective = getattr(module, "objective", None)
    projector = [p for p in objective.parameters() if p.requires_grad] if objective is not None else []
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if projector:  # its own group, so that it can be frozen before start_step
        groups.append({"params": projector, "weight_decay": cfg.optim.weight_decay})
    opt = torch.optim.AdamW(
        groups,
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        fused=fused_adamw(device),
    )
    sched = get_wsd_schedule(
        opt,
        num_warmup_steps=cfg.optim.warmup_steps,  # validated to fit before the decay: never clipped
        num_decay_steps=cfg.decay_steps,
        num_training_steps=cfg.steps,
        decay_type=cfg.optim.decay_type,
        min_lr_ratio=cfg.optim.min_lr_ratio,
    )
    if projector and cfg.objective.freeze_projector and cfg.objective.start_step > 0:
        wsd, start = sched.lr_lambdas[0], cfg.objective.start_step
        # lr 0 until start_step: AdamW's update and its decoupled decay (lr x weight_decay) are both zero
        sched.lr_lambdas[2] = lambda step: 0.0 if step < start else wsd(step)
        opt.param_groups[2]["lr"] = 0.0  # LambdaLR already set step 0's lr from the old lambda
    return opt, sched
