"""The training loop: one arm (NTP, NITP or an ablation) of a pair, one process or many (torchrun).

Layout written (docs/training.md, "Run directory"):
    <out>/config.yaml, provenance.json, metrics.jsonl
    <out>/checkpoints/step-NNNNNN/   HF model + tokenizer, nitp_projector.safetensors, trainer_state.pt
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from nitp_train.config import TrainConfig, dump_config
from nitp_train.data import WindowSampler, fixed_windows, prepare_data
from nitp_train.errors import UserError
from nitp_train.objective import NITPObjective
from nitp_train.presets import get_preset

STATE_FILE = "trainer_state.pt"


# ---------------------------------------------------------------------------- processes and devices


class Dist:
    """torch.distributed when launched by torchrun (gloo on CPU, NCCL on GPU); a no-op otherwise."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
        self.device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return (t / self.world).tolist()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it and on CPUs with AMX tiles; fp32 otherwise (docs/training.md: measured).

    This project's VM exposes AVX512-BF16 but no AMX to the guest (`torch.cpu._is_amx_tile_supported()`
    is False), and there a bf16 training step was ~1.4x slower than fp32, so `auto` keeps such CPUs in fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and torch.cpu._is_amx_tile_supported():
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------------- model + objective


class TrainModule(nn.Module):
    """Backbone and objective in one module, so DDP/FSDP see every trained parameter."""

    def __init__(self, model, objective: NITPObjective):
        super().__init__()
        self.model = model
        self.objective = objective
        self.is_moe = getattr(model.config, "num_experts", 0) > 0

    def forward(self, input_ids: torch.Tensor, step: int):
        kwargs = {"output_router_logits": True} if self.is_moe else {}
        out = self.model(
            input_ids=input_ids,
            labels=input_ids,
            use_cache=False,
            output_hidden_states=self.objective.needs_hidden_states,
            **kwargs,
        )
        loss_ntp = out.loss
        parts = {}
        if self.is_moe:  # HF adds coef * load-balancing loss to out.loss; log the CE alone
            router = self.model.config.router_aux_loss_coef * out.aux_loss
            loss_ntp = out.loss - router
            parts["loss_router"] = out.aux_loss.item()
        aux = self.objective(out.hidden_states, None, step) if self.objective.needs_hidden_states else None
        total = out.loss + (aux.loss if aux is not None else 0.0)
        parts.update({"loss_ntp": loss_ntp.item(), "loss_total": total.item()})
        if aux is not None:
            parts.update(aux.metrics)
        return total, parts


def build_model(cfg: TrainConfig, tokenizer):
    from transformers import AutoModelForCausalLM

    preset = get_preset(cfg.model.preset)
    try:
        hf_config = preset.hf_config(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **cfg.model.hf_overrides,
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"model.hf_overrides: {e}") from e
    if hf_config.vocab_size < len(tokenizer):
        raise UserError(
            f"tokenizer has {len(tokenizer)} tokens but preset {preset.name} has vocab_size {hf_config.vocab_size}; use a smaller tokenizer"
        )
    if cfg.seq_len > hf_config.max_position_embeddings:
        raise UserError(
            f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings={hf_config.max_position_embeddings}; "
            f"lower seq_len or --set model.hf_overrides.max_position_embeddings={cfg.seq_len}"
        )
    torch.manual_seed(cfg.seed)  # the backbone init depends on the seed only: identical in every arm
    model = AutoModelForCausalLM.from_config(hf_config)
    # the projector draws from its own RNG stream, leaving the global one untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 7919)
        try:
            objective = NITPObjective(cfg.objective, hf_config.hidden_size, hf_config.num_hidden_layers)
        except ValueError as e:
            raise UserError(str(e)) from e
    return model, objective


def weights_sha256(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_optimizer(cfg: TrainConfig, module: nn.Module):
    from transformers import get_wsd_schedule

    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)  # no decay on norms and biases
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
    )
    decay_steps = int(round(cfg.steps * cfg.optim.decay_ratio))
    warmup = min(cfg.optim.warmup_steps, cfg.steps - decay_steps)
    sched = get_wsd_schedule(
        opt,
        num_warmup_steps=warmup,
        num_decay_steps=decay_steps,
        num_training_steps=cfg.steps,
        decay_type=cfg.optim.decay_type,
        min_lr_ratio=cfg.optim.min_lr_ratio,
    )
    return opt, sched


# ---------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "checkpoints").glob("step-*") if p.is_dir() and (p / STATE_FILE).exists())


def _full_state(module: TrainModule, opt, fsdp: bool) -> tuple[dict, dict]:
    """Unsharded model+objective weights and optimizer state (collective under FSDP: every rank calls)."""
    if not fsdp:
        return module.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options), get_optimizer_state_dict(module, opt, options=options)


def save_checkpoint(
    out: Path,
    step: int,
    module: TrainModule,
    tokenizer,
    opt,
    sched,
    cfg: TrainConfig,
    dist: Dist,
    consumed_sha: str = "",
) -> Path:
    """Atomic: everything goes to a temp dir that is renamed into place once complete."""
    final = out / "checkpoints" / f"step-{step:06d}"
    weights, opt_state = _full_state(module, opt, fsdp=cfg.parallel == "fsdp" and dist.world > 1)
    if dist.is_main:
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        model_sd = {k[len("model.") :]: v for k, v in weights.items() if k.startswith("model.")}
        if module.model.config.tie_word_embeddings:  # gathered copies are no longer tied: store the weight once
            model_sd.pop("lm_head.weight", None)
        module.model.save_pretrained(tmp, state_dict=model_sd)
        tokenizer.save_pretrained(tmp)
        if module.objective.config.name == "nitp":
            module.objective.save(
                tmp, {k[len("objective.") :]: v for k, v in weights.items() if k.startswith("objective.")}
            )
        state = {
            "step": step,
            "optimizer": opt_state,
            "scheduler": sched.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "config": cfg.to_dict(),
            "world_size": dist.world,
            "consumed_order_sha256": consumed_sha,
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    dist.barrier()
    return final


def load_weights(ckpt: Path, model, objective) -> None:
    """Load model and projector weights into the unwrapped modules."""
    from safetensors.torch import load_file

    state_dict = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        if f.name != "nitp_projector.safetensors":
            state_dict.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [m for m in missing if not (model.config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(
            f"{ckpt}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); same preset and overrides?"
        )
    if model.config.tie_word_embeddings:
        model.tie_weights()
    if objective.config.name == "nitp":
        objective.load_state_dict(load_file(str(ckpt / "nitp_projector.safetensors")))


def load_optimizer(state: dict, module, opt, sched, fsdp: bool) -> int:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(module, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return state["step"]


# ---------------------------------------------------------------------------- evaluation during training


@torch.no_grad()
def validation_ce(model, windows: torch.Tensor, micro_batch: int, device, amp) -> float:
    model.eval()
    losses = []
    for i in range(0, len(windows), micro_batch):
        x = windows[i : i + micro_batch].to(device)
        with _autocast(device, amp):
            losses.append(model(input_ids=x, labels=x, use_cache=False).loss.float().item())
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def geometry_probe(model, windows: torch.Tensor, device, amp) -> dict:
    """Effective rank and mean pairwise cosine of last-layer states (paper App. D), fixed probe batch."""
    from nitp_train.metrics import probe_metrics

    model.eval()
    with _autocast(device, amp):
        h = model(input_ids=windows.to(device), use_cache=False, output_hidden_states=True).hidden_states[-1]
    model.train()
    m = probe_metrics(h.float(), None)
    return {"probe_erank": float(m["erank_cov"]), "probe_cosine": float(m["anisotropy"])}


def _autocast(device, amp):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


# ---------------------------------------------------------------------------- the run


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse an existing run dir without --resume/--overwrite; True when it has content. Writes nothing."""
    has_content = out.exists() and any(out.iterdir())
    if has_content and not resume and not overwrite:
        raise UserError(f"{out} exists; pass --resume to continue it or --overwrite to start over (deletes it)")
    return has_content


def prepare_out_dir(out: Path, replace: bool, dist: Dist) -> None:
    """Create (or, with `replace`, recreate) the run dir: only once data and model are known to be good."""
    dist.barrier()
    if replace and dist.is_main:
        shutil.rmtree(out)
    dist.barrier()
    if dist.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    dist.barrier()


# Fields a resumed run may change: how long it runs, how often it saves, logs and measures, and
# where it runs (the global batch, and so the maths, stays the same).
RESUMABLE_CHANGES = {
    "steps",
    "save_every",
    "log_every",
    "eval_every",
    "eval_batches",
    "probe_every",
    "probe_batch",
    "device",
    "parallel",
    "micro_batch",
}


def check_resume_config(cfg: TrainConfig, saved: dict, ckpt: Path) -> None:
    """A resumed run must be the same run: refuse any other config change (it would silently mix two runs)."""
    now = cfg.to_dict()
    changed = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and now.get(k) != saved.get(k))
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise UserError(
            f"--resume from {ckpt} with a different config ({diffs}); give the original settings "
            f"(see its config.yaml) or start a new run dir"
        )


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train one arm; returns a summary (final step, last logged metrics, paths)."""
    out = Path(out)
    dist = Dist(cfg.device)
    per_rank, rem = divmod(cfg.global_batch, dist.world)
    accum, rem2 = divmod(per_rank, min(cfg.micro_batch, per_rank))
    if rem or rem2:
        raise UserError(
            f"global_batch={cfg.global_batch} must split evenly over {dist.world} process(es) x micro_batch={cfg.micro_batch}"
        )
    micro = per_rank // accum
    has_content = check_out_dir(out, resume, overwrite)
    ckpts = checkpoint_dirs(out) if resume else []
    resume_state = torch.load(ckpts[-1] / STATE_FILE, map_location="cpu", weights_only=False) if ckpts else None
    if resume_state:
        check_resume_config(cfg, resume_state["config"], ckpts[-1])

    cache = Path(cfg.data.cache_dir or cache_dir or out.parent / "data")
    data = prepare_data(cfg.data, cache, is_main=dist.is_main, barrier=dist.barrier)
    model, objective = build_model(cfg, data.tokenizer)
    sampler = WindowSampler(data.train, cfg.seq_len, cfg.seed)
    prepare_out_dir(out, replace=has_content and overwrite and not resume, dist=dist)
    init_sha = weights_sha256(model)
    if resume_state:
        load_weights(ckpts[-1], model, objective)
    model.to(dist.device).train()
    objective.to(dist.device).train()
    module = TrainModule(model, objective)
    fsdp = cfg.parallel == "fsdp" and dist.world > 1
    wrapped = module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)  # its own group, so evaluation can call the backbone alone
        wrapped = fully_shard(module)
    elif dist.world > 1:
        wrapped = nn.parallel.DistributedDataParallel(module)
    opt, sched = make_optimizer(cfg, module)  # after sharding: FSDP2 swaps parameters for DTensors
    start = load_optimizer(resume_state, module, opt, sched, fsdp) if resume_state else 0
    # hash chain over the window ids of every global batch consumed so far: equal in two arms
    # exactly when they saw the same batches in the same order (continued across resumes)
    consumed_sha = resume_state.get("consumed_order_sha256", "") if resume_state else ""

    val_windows = fixed_windows(data.val, cfg.seq_len, cfg.eval_batches * micro)
    probe_windows = fixed_windows(
        data.val if len(data.val) >= cfg.seq_len else data.train, cfg.seq_len, cfg.probe_batch
    )
    amp = autocast_dtype(cfg.precision, dist.device)
    if dist.is_main:
        dump_config(cfg, out / "config.yaml")
        order = hashlib.sha256(
            json.dumps([sampler.sample_ids(s, cfg.global_batch) for s in range(min(cfg.steps, 64))]).encode()
        )
        provenance = {
            "seed": cfg.seed,
            "init_weights_sha256": init_sha,
            "data_sha256": data.meta["sha256_train"],
            "order_sha256": order.hexdigest(),
            "data_dir": str(data.dir),
            "vocab_size": model.config.vocab_size,
            "world_size": dist.world,
            "parallel": cfg.parallel if dist.world > 1 else "none",
            "precision": str(amp).replace("torch.", "") if amp else "fp32",
            "objective": cfg.objective.to_dict(),
        }
        if start == 0:
            (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
        _truncate_metrics(out / "metrics.jsonl", start)

    params = [p for p in module.parameters() if p.requires_grad]
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps, initial=start, desc=f"{out.name} ({cfg.objective.name})", unit="step", dynamic_ncols=True
        )
    last = {}
    t_start = time.perf_counter()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        global_ids = sampler.sample_ids(step, cfg.global_batch)
        consumed_sha = hashlib.sha256(f"{consumed_sha}:{global_ids}".encode()).hexdigest()
        ids = global_ids[dist.rank * per_rank : (dist.rank + 1) * per_rank]
        sums: dict[str, float] = {}
        for m in range(accum):
            x = sampler.batch(ids[m * micro : (m + 1) * micro]).to(dist.device)
            sync = (
                contextlib.nullcontext()
                if m == accum - 1 or dist.world == 1 or cfg.parallel != "ddp"
                else wrapped.no_sync()
            )
            with sync:
                with _autocast(dist.device, amp):
                    total, parts = wrapped(x, step)
                (total / accum).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / accum
        keys = sorted(sums)
        means = dict(zip(keys, dist.mean([sums[k] for k in keys])))
        if not math.isfinite(means["loss_total"]):
            raise _non_finite(f"loss ({means['loss_total']})", step, out)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        if not math.isfinite(float(grad_norm)):  # a finite loss can still give inf/NaN gradients
            raise _non_finite("gradient norm", step, out)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        dt = time.perf_counter() - t0
        record = {
            "step": done,
            "tokens": done * cfg.global_batch * cfg.seq_len,
            "lr": lr,
            **means,
            "grad_norm": float(grad_norm),
            "tokens_per_s": cfg.global_batch * cfg.seq_len / dt,
            "elapsed_s": time.perf_counter() - t_start,
        }
        if cfg.eval_every and val_windows is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            record["val_ce"] = validation_ce(model, val_windows, micro, dist.device, amp)
        if (
            cfg.probe_every
            and probe_windows is not None
            and (done % cfg.probe_every == 0 or done == 1 or done == cfg.steps)
        ):
            record.update(geometry_probe(model, probe_windows, dist.device, amp))
        if dist.is_main and (
            done % cfg.log_every == 0 or done == cfg.steps or "val_ce" in record or "probe_erank" in record
        ):
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        last = record
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{means['loss_ntp']:.3f}",
                **({"nitp": f"{means['loss_nitp']:.3f}"} if "loss_nitp" in means else {}),
            )
        if done % cfg.save_every == 0 or done == cfg.steps:
            save_checkpoint(out, done, module, data.tokenizer, opt, sched, cfg, dist, consumed_sha)
    if bar is not None:
        bar.close()
    if dist.is_main:
        provenance = json.loads((out / "provenance.json").read_text())
        provenance.update(consumed_order_sha256=consumed_sha, consumed_steps=cfg.steps)
        (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
    dist.barrier()
    return {"out": str(out), "step": cfg.steps, "last": last, "init_weights_sha256": init_sha}


def _non_finite(what: str, step: int, out: Path) -> UserError:
    kept = checkpoint_dirs(out)
    return UserError(
        f"non-finite {what} at step {step + 1}: stopped before the update; "
        f"last good checkpoint: {kept[-1] if kept else 'none'}; lower optim.lr or check the data"
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint we restart from (they will be redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):  # a line cut short by a kill mid-write
            continue
    path.write_text("".join(line + "\n" for line in keep))
