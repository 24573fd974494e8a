"""`nitp-train plan`: what a run costs before it runs (steps, tokens, FLOPs) and whether it fits per GPU.

Memory per GPU is the sum of
    parameters   fp32 master weights (sharded over GPUs under FSDP)
    gradients    fp32, same sharding; under FSDP with accumulation and fsdp_grad_sync=last_micro also the
                 whole model's unsharded fp32 gradients, which FSDP2 keeps between micro-batches
    optimizer    AdamW's two fp32 moments, same sharding
    gathered     FSDP's unsharded compute copies: the root group (embeddings, LM head) and two decoder
                 layers at a time (the current one and the prefetched next), at the compute dtype
    activations  what autograd saves per token and layer (counted below), for one micro-batch, or with
                 activation checkpointing the layer inputs plus one layer recomputed at a time
    logits       the LM head's output and its fp32 loss copies: [tokens, vocab], the largest tensor, or with
                 the chunked cross-entropy (ce_chunk_tokens > 0) one chunk's, plus the head's weight and
                 hidden-state gradients that it computes in the forward
The per-layer activation count follows HF's Qwen2 / Qwen2-MoE layers with SDPA attention (no
[seq x seq] scores): checked against measured peaks on CPU (tests/test_plan.py, docs/training.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from nitp_train.config import TrainConfig
from nitp_train.flops import flops_per_token
from nitp_train.model import resolved_preset
from nitp_train.objective import PROJECTORS
from nitp_train.presets import param_counts

GB = 1e9


@dataclass
class MemoryPlan:
    parameters: float
    gradients: float
    optimizer: float
    gathered: float
    activations: float
    activations_checkpointed: float
    logits: float
    projector_activations: float
    unsharded_gradients: float = 0.0

    def total(self, checkpointed: bool) -> float:
        """The peak: at the start of the backward every activation is alive and few gradients exist yet;
        by its end the activations are freed and the gradients complete (set_to_none between steps).
        Deferred FSDP gradients (unsharded_gradients) live through the later micro-batches' backward."""
        acts = (self.activations_checkpointed if checkpointed else self.activations) + self.logits
        held = self.parameters + self.optimizer + self.gathered + self.unsharded_gradients
        return held + max(self.gradients, acts + self.projector_activations)


def _layer_activation_elems(hf: dict, moe_layer: bool, bytes_act: int) -> float:
    """Elements (of the activation dtype) saved for backward per token in one decoder layer.

    Each RMSNorm keeps its input and normalised output (plus fp32 copies of both under bf16: the norm
    computes in fp32); attention keeps the rotated q and k, v and the SDPA output; a SwiGLU MLP keeps
    gate, act(gate), up and their product. Fitted to measured CPU peaks (fp32) within a few per cent.
    """
    d = hf["hidden_size"]
    heads = hf["num_attention_heads"]
    kv = hf.get("num_key_value_heads") or heads
    hd = hf.get("head_dim") or d // heads
    norms = 2 * d + (2 * 2 * d * 4 // bytes_act if bytes_act < 4 else 0)
    attention = 2 * heads * hd + 2 * kv * hd
    if not moe_layer:
        mlp = 4 * hf["intermediate_size"]  # gate, up, act(gate), act(gate) * up
    else:
        k = hf["num_experts_per_tok"]
        mlp = (
            k * (d + 4 * hf["moe_intermediate_size"])  # each routed copy of the token: its input and SwiGLU parts
            + 4 * hf.get("shared_expert_intermediate_size", 0)
            + 2 * d  # shared expert and its gate
            + 3 * hf["num_experts"]  # router logits, softmax, top-k bookkeeping
        )
    return norms + attention + mlp


def memory_plan(cfg: TrainConfig, vocab_size: int, gpus: int, bytes_act: int = 2, bytes_compute: int = 2) -> MemoryPlan:
    preset = resolved_preset(cfg, vocab_size)
    hf = preset.hf
    counts = param_counts(preset, vocab_size=vocab_size)
    d, L, V = hf["hidden_size"], hf["num_hidden_layers"], hf.get("vocab_size", vocab_size)
    nitp = cfg.objective.name == "nitp"
    proj_params = {"swiglu": 3 * cfg.objective.projector_mult * d * d, "linear": d * d, "none": 0}
    n_params = counts["total"] + (proj_params[cfg.objective.projector] if nitp else 0)
    shards = gpus if cfg.parallel == "fsdp" else 1
    tokens = cfg.micro_batch * cfg.seq_len
    moe_layers = set(range(L)) - set(hf.get("mlp_only_layers") or []) if preset.is_moe else set()
    per_layer = [_layer_activation_elems(hf, i in moe_layers, bytes_act) for i in range(L)]
    embed = V * d * (1 if hf.get("tie_word_embeddings") else 2)
    layer_params = (counts["total"] - embed) / L
    gathered = 0.0
    if cfg.parallel == "fsdp" and gpus > 1:
        gathered = (
            embed + 2 * layer_params
        ) * bytes_compute  # the unsharded copies (their gradients are freed per layer)
    hidden_states = d  # the final norm's output (each layer's output is the next one's saved input)
    _, accumulation, _ = cfg.batch_split(gpus)
    deferred = cfg.parallel == "fsdp" and gpus > 1 and accumulation > 1 and cfg.fsdp_grad_sync == "last_micro"
    return MemoryPlan(
        parameters=4 * n_params / shards,
        gradients=4 * n_params / shards,
        optimizer=8 * n_params / shards,
        gathered=gathered,
        activations=tokens * bytes_act * (sum(per_layer) + hidden_states),
        activations_checkpointed=tokens * bytes_act * (max(per_layer) + hidden_states + L * d),
        logits=_logits_bytes(cfg, tokens, V, d, bytes_act),
        projector_activations=tokens * bytes_act * (2 * cfg.objective.projector_mult * d + 2 * d) if nitp else 0.0,
        # FSDP2 accumulates them in the reduce dtype (fp32 by default), or the compute dtype when that equals it
        unsharded_gradients=n_params * (4 if cfg.fsdp_reduce_dtype == "fp32" else bytes_compute) if deferred else 0.0,
    )


# ---------------------------------------------------------------------------- run defaults (planner and trainer)

USABLE = 0.9  # of a GPU's memory: ~10 % for the allocator's fragmentation, NCCL buffers and the CUDA context


def activation_bytes(cfg: TrainConfig) -> int:
    """Bytes per activation element: fp32 when precision=fp32, else the bf16 autocast a GPU run uses."""
    return 4 if cfg.precision == "fp32" else 2


def _peak_bytes(cfg: TrainConfig, world: int, vocab: int, micro: int) -> float:
    mem = memory_plan(dataclasses.replace(cfg, micro_batch=micro), vocab, world, bytes_act=activation_bytes(cfg))
    return mem.total(cfg.activation_checkpointing)


def resolve_micro_batch(cfg: TrainConfig, world: int, vocab: int, mem_bytes: float | None) -> int:
    """The micro-batch a run uses: the config's; or (auto) the largest that fits `mem_bytes` per device.

    Only divisors of the per-process share are tried (the batch must split evenly); 1 when none fits (the
    fit check then refuses the run). Without a memory size (a CPU) auto is what TrainConfig.batch_split picks.
    """
    per_rank, _, micro = cfg.batch_split(world)  # a batch that cannot split is refused here, one line
    if cfg.micro_batch is not None or mem_bytes is None:
        return micro
    fitting = [m for m in range(1, per_rank + 1) if per_rank % m == 0]
    fitting = [m for m in fitting if _peak_bytes(cfg, world, vocab, m) <= mem_bytes * USABLE]
    return fitting[-1] if fitting else 1


def resolve_grad_sync(cfg: TrainConfig, world: int, vocab: int, mem_bytes: float | None) -> str:
    """`fsdp_grad_sync` made concrete: as given; or (auto) last_micro where the whole model's unsharded fp32
    gradients, which FSDP2 keeps between the micro-batches of a step, fit the device beside everything else,
    else every_micro. Without a memory size (a CPU: the ranks share the host's memory) every_micro, so that
    no rank holds the whole model's gradients."""
    if cfg.fsdp_grad_sync != "auto":
        return cfg.fsdp_grad_sync
    if cfg.parallel != "fsdp":  # DDP holds whole gradients anyway: it all-reduces on the last micro-batch
        return "last_micro"
    if mem_bytes is None:
        return "every_micro"
    deferred = dataclasses.replace(cfg, fsdp_grad_sync="last_micro")
    return "last_micro" if _peak_bytes(deferred, world, vocab, cfg.micro_batch) <= mem_bytes * USABLE else "every_micro"


def resolve_sizing(cfg: TrainConfig, world: int, vocab: int, mem_bytes: float | None) -> TrainConfig:
    """The micro-batch, then the gradient sync at that micro-batch, as `plan` and the trainer both resolve them
    (without the trainer's refusal of a run that cannot fit)."""
    cfg = dataclasses.replace(cfg, micro_batch=resolve_micro_batch(cfg, world, vocab, mem_bytes))
    return dataclasses.replace(cfg, fsdp_grad_sync=resolve_grad_sync(cfg, world, vocab, mem_bytes))


def resolve_run(cfg: TrainConfig, world: int, vocab: int, mem_bytes: float | None) -> TrainConfig:
    """The config a run trains with: its defaults resolved the same way by `nitp-train plan` and the trainer.

    Everything else (activation checkpointing, parallel mode, export cadence and dtype, precision) is
    resolved by `load_config` from the preset for both; the micro-batch also needs the device's memory.
    A run that cannot fit is refused here, before any weights exist, with the planner's advice.
    """
    resolved = resolve_sizing(cfg, world, vocab, mem_bytes)
    if mem_bytes is not None:
        mem = memory_plan(resolved, vocab, world, bytes_act=activation_bytes(cfg))
        budget = mem_bytes * USABLE
        fits = {"without_ac": mem.total(False) <= budget, "with_ac": mem.total(True) <= budget}
        if not fits["with_ac" if cfg.activation_checkpointing else "without_ac"]:
            from nitp_train.errors import UserError

            peak = mem.total(cfg.activation_checkpointing) / GB
            raise UserError(
                f"preset {cfg.model.preset} at micro_batch {resolved.micro_batch} needs ~{peak:.1f} GB per device of "
                f"{mem_bytes / GB:.1f} GB: {_advice(resolved, mem, fits, budget, world)} (nitp-train plan shows the parts)"
            )
    return resolved


def export_disk(cfg: TrainConfig, n_params: float) -> dict:
    """Disk taken by the HF exports and training states a run keeps (GB), and how many of each."""
    steps = set(range(cfg.export_every or cfg.save_every, cfg.steps + 1, cfg.export_every or cfg.save_every))
    steps.add(cfg.steps)
    kept = sorted(steps)[-cfg.keep_exports :] if cfg.keep_exports else sorted(steps)
    exports = len(set(kept) | (steps & set(cfg.export_steps)))
    states = (
        min(cfg.keep_last, -(-cfg.steps // cfg.save_every)) + 1 if cfg.keep_last else -(-cfg.steps // cfg.save_every)
    )
    export_gb = n_params * (2 if cfg.export_dtype == "bf16" else 4) / GB
    state_gb = n_params * 12 / GB  # fp32 weights and AdamW's two moments
    return {"exports": exports, "export_gb": export_gb, "states": states, "state_gb": state_gb,
            "total_gb": exports * export_gb + states * state_gb}  # fmt: skip


def _logits_bytes(cfg: TrainConfig, tokens: int, V: int, d: int, bytes_act: int) -> float:
    low = bytes_act if bytes_act < 4 else 0  # a compute-dtype copy exists only below fp32
    if not cfg.ce_chunk_tokens:  # logits at the compute dtype, their fp32 copy, log-softmax and its gradient (fp32)
        return tokens * V * (3 * 4 + low)
    # nitp_train/loss.py: one chunk's fp32 logits and their log-softmax, the head's weight at the compute dtype
    # and one chunk's product for its gradient, the fp32 weight gradient and the hidden-state gradient (both
    # kept for the backward); tests/test_loss.py and benchmarks/ce_memory.py measure it
    rows = min(tokens, cfg.ce_chunk_tokens)
    return rows * V * 2 * 4 + V * d * (4 + bytes_act + low) + tokens * d * 4


def plan_run(cfg: TrainConfig, gpus: int, gpu_mem_gb: float) -> dict:
    """Everything `nitp-train plan` prints, as a dict (bytes in GB)."""
    from nitp_train.errors import UserError

    if gpus < 1 or gpu_mem_gb <= 0:
        raise UserError(f"--gpus {gpus} and --gpu-mem {gpu_mem_gb} must be positive")
    if cfg.objective.projector not in PROJECTORS:
        raise UserError(f"objective.projector={cfg.objective.projector!r} is unknown")
    preset = resolved_preset(cfg, 151936)
    vocab = preset.hf.get("vocab_size", 151936)
    # the trainer's own resolution, without its refusal: the plan shows what does not fit and why
    cfg = resolve_sizing(cfg, gpus, vocab, gpu_mem_gb * GB)
    _, accumulation, _ = cfg.batch_split(gpus)
    bytes_act = activation_bytes(cfg)
    mem = memory_plan(cfg, vocab, gpus, bytes_act=bytes_act)
    flops = flops_per_token(preset, seq_len=cfg.seq_len, projector=cfg.objective.projector,
                            projector_mult=cfg.objective.projector_mult)  # fmt: skip
    budget = gpu_mem_gb * GB * USABLE
    fits = {"without_ac": mem.total(False) <= budget, "with_ac": mem.total(True) <= budget}
    n_params = param_counts(preset, vocab_size=vocab)["total"]
    return {
        "preset": cfg.model.preset,
        "gpus": gpus,
        "gpu_mem_gb": gpu_mem_gb,
        "parallel": cfg.parallel,
        "precision": cfg.precision,
        "activation_checkpointing": cfg.activation_checkpointing,
        "export_every": cfg.export_every or cfg.save_every,
        "export_dtype": cfg.export_dtype,
        "disk_gb": export_disk(cfg, n_params),
        "steps": cfg.steps,
        "tokens": cfg.tokens,
        "global_batch": cfg.global_batch,
        "seq_len": cfg.seq_len,
        "micro_batch": cfg.micro_batch,
        "grad_accumulation": accumulation,
        "fsdp_grad_sync": cfg.fsdp_grad_sync,
        "warmup_steps": cfg.optim.warmup_steps,
        "decay_start": cfg.decay_start,
        "flops_per_step": flops.exact_baseline * cfg.tokens_per_step + flops.exact_nitp_extra * cfg.tokens_per_step,
        "nitp_overhead": flops.exact_overhead,
        "memory_gb": {k: v / GB for k, v in asdict(mem).items()},
        "largest_logits_gb": min(cfg.micro_batch * cfg.seq_len, cfg.ce_chunk_tokens or math.inf) * vocab * 4 / GB,
        "total_gb": {"without_ac": mem.total(False) / GB, "with_ac": mem.total(True) / GB},
        "fits": fits,
        "advice": _advice(cfg, mem, fits, budget, gpus),
    }


def _advice(cfg: TrainConfig, mem: MemoryPlan, fits: dict, budget: float, gpus: int) -> str:
    if fits["with_ac" if cfg.activation_checkpointing else "without_ac"]:
        return "fits as configured"
    if fits["with_ac"]:
        return "fits with --set activation_checkpointing=true"
    states = mem.parameters + mem.gradients + mem.optimizer
    if cfg.parallel != "fsdp":
        return "use --set parallel=fsdp to shard parameters, gradients and optimizer state"
    if states + mem.gathered > budget:
        need = math.ceil(gpus * states / max(budget - mem.gathered, 1))
        return f"parameters + optimizer state alone exceed the GPU: shard over >= {need} GPUs"
    return "lower micro_batch (more accumulation steps) or seq_len; activation checkpointing is not enough"


def format_plan(p: dict) -> str:
    m = p["memory_gb"]
    lines = [
        f"preset {p['preset']} on {p['gpus']} x {p['gpu_mem_gb']:g} GB ({p['parallel']}, precision {p['precision']}, "
        f"activation checkpointing {'on' if p['activation_checkpointing'] else 'off'})",
        f"  steps {p['steps']:,}  tokens {p['tokens']:.4g}  global batch {p['global_batch']} x {p['seq_len']}  "
        f"micro-batch {p['micro_batch']}  accumulation {p['grad_accumulation']}"
        + (f"  gradient sync {p['fsdp_grad_sync']}" if p["parallel"] == "fsdp" and p["grad_accumulation"] > 1 else ""),
        f"  schedule: warm-up {p['warmup_steps']:,}, decay from step {p['decay_start']:,}",
        f"  FLOPs per step {p['flops_per_step']:.4g} (Appendix G model; NITP overhead {100 * p['nitp_overhead']:.2f} %)",
        "  memory per GPU (GB):",
    ]
    for key in ("parameters", "gradients", "unsharded_gradients", "optimizer", "gathered", "activations",
                "activations_checkpointed", "logits", "projector_activations"):  # fmt: skip
        lines.append(f"    {key:26} {m[key]:10.2f}")
    lines.append(f"    {'largest logits tensor':26} {p['largest_logits_gb']:10.2f}")
    t = p["total_gb"]
    lines.append(f"  total: {t['without_ac']:.2f} GB without activation checkpointing, {t['with_ac']:.2f} GB with it")
    lines.append(f"  fits: {p['advice']}")
    d = p["disk_gb"]
    lines.append(
        f"  disk: {d['exports']} HF exports every {p['export_every']:,} steps x {d['export_gb']:.1f} GB ({p['export_dtype']}) "
        f"+ {d['states']} training states x {d['state_gb']:.1f} GB = {d['total_gb']:.0f} GB"
    )
    return "\n".join(lines)
