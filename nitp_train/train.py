"""The training loop: one arm (NTP, NITP or an ablation) of a pair, one process or many (torchrun).

torchtitan's shape: `setup()` returns a `TrainState`; the loop in `train()` then runs `train_step()`
(forward, backward, clip, update: no host read) and `periodic()` (eval, probes, the log, save, export,
each timed apart from compute by the StepLog's timers).

The parts live beside it: processes and wrapping (distributed.py), the model and its seeded init
(model.py), checkpoints (checkpoint.py), in-training evaluation (evaluate.py), data (data.py).
Run directory: docs/training.md, "Run directory".
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nitp_train.checkpoint import Checkpointer, latest_state, read_trainer, state_dirs, step_of
from nitp_train.config import TrainConfig, dump_config, merge
from nitp_train.data import WindowSampler, fixed_windows, prefetched_batches, prepare_data
from nitp_train.distributed import (
    Dist,
    autocast,
    autocast_dtype,
    compile_layers,
    configure_kernels,
    cpu_bf16_is_emulated,
    host_memory_policy,
    replicate,
    resolve_precision,
    shard,
)
from nitp_train.errors import Interrupted, UserError
from nitp_train.evaluate import geometry_probe, validation_ce
from nitp_train.launch import is_main_process, launch_world
from nitp_train.model import build_meta_module, hf_config, make_optimizer, materialise, resolved_preset
from nitp_train.plan import resolve_run
from nitp_train.step_log import NonFinite, StepLog
from nitp_train.throughput import device_peak
from nitp_train.version import check_torch, git_commit

# Fields a resumed run may change: how often it saves, logs and measures, and where and how it runs
# (the global batch, the LR horizon and so the maths stay the same).
RESUMABLE_CHANGES = {
    "save_every", "export_every", "keep_last", "async_checkpoint", "log_every", "eval_every", "probe_every",
    "device", "parallel", "micro_batch", "activation_checkpointing", "dist_timeout_s", "compile", "log",
    "peak_tflops", "keep_exports", "export_steps", "export_dtype", "max_consecutive_skips", "precision",
    "release_host_memory", "fsdp_grad_sync",
}  # fmt: skip


@dataclass
class TrainState:
    """Everything the loop needs, built once by `setup`: the run, its model and optimiser, where it stands."""

    cfg: TrainConfig
    out: Path
    dist: Dist
    data: object  # TokenData
    sampler: WindowSampler
    module: torch.nn.Module  # TrainModule (FSDP-sharded in place, or plain)
    wrapped: torch.nn.Module  # what the step calls: the module, or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: object
    ckpt: Checkpointer
    log: StepLog
    amp: torch.dtype | None
    per_rank: int
    accum: int
    micro: int
    start: int
    consumed_sha: str  # hash chain over the window ids of every global batch consumed so far
    val_windows: torch.Tensor | None
    probe_windows: torch.Tensor | None
    init_sha: str

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    extend_from: str | Path | None = None,
) -> dict:
    """Train one arm; returns a summary (final step, last logged metrics, paths).

    `extend_from`: a training state (or an arm dir: its last state before the decay) of another run,
    continued in `out` under this config's longer LR horizon (docs/training.md, "Schedule").
    """
    s = setup(cfg, out, resume, overwrite, cache_dir, progress, extend_from)
    cfg, out, step = s.cfg, s.out, s.start
    params = s.params
    try:
        for step, global_ids, batches in prefetched_batches(s.sampler, range(s.start, cfg.steps), cfg.global_batch,
                                                             s.dist.rank, s.per_rank, s.micro, s.dist.device):  # fmt: skip
            s.consumed_sha = hashlib.sha256(f"{s.consumed_sha}:{global_ids}".encode()).hexdigest()
            with s.log.timer("first_step" if step == s.start else None):  # compile and warm-up: not compute
                lr = train_step(s, step, batches, params)
            periodic(s, step + 1, lr)
        s.ckpt.wait()
    except NonFinite as e:
        s.ckpt.wait()  # an asynchronous save of an earlier, checked step still lands
        raise _non_finite(e, out) from None
    except KeyboardInterrupt:
        raise _interrupted(out, step) from None
    finally:
        s.log.close()
        s.ckpt.close()
    return finish(s)


def train_step(s: TrainState, step: int, batches: list[torch.Tensor], params: list) -> float:
    """Forward and backward over the micro-batches, clip, and one optimiser update (skipped on the device
    when the loss or the gradient norm is not finite); returns the step's learning rate. No host read."""
    sums: dict[str, torch.Tensor] = {}
    for m, x in enumerate(batches):
        sync = m == s.accum - 1 or s.cfg.fsdp_grad_sync == "every_micro"  # every_micro: DDP's all-reduce too
        with _no_sync(s.wrapped, sync), autocast(s.dist.device, s.amp):
            total, parts = s.wrapped(x, step)
        (total / s.accum).backward()
        for k, v in parts.items():  # device tensors: no host read here
            sums[k] = sums.get(k, 0.0) + v.float() / s.accum
    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.cfg.optim.grad_clip, foreach=True)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    bad = ~(torch.isfinite(sums["loss_total"]) & torch.isfinite(grad_norm))
    if s.dist.world > 1:  # every rank skips, or none (a NaN on one rank poisons the reduced gradients anyway)
        bad = s.dist.all_reduce_sum(bad.float()) > 0
    s.log.step(step + 1, sums, grad_norm, bad)
    lr = s.sched.get_last_lr()[0]
    s.opt.found_inf = bad.float()  # fused AdamW leaves weights, moments and step count untouched when it is 1
    s.opt.step()
    s.sched.step()
    s.opt.zero_grad(set_to_none=True)
    return lr


def periodic(s: TrainState, done: int, lr: float) -> None:
    """The work between steps, each part timed apart from compute: eval, probes, the log, save, export."""
    cfg, last = s.cfg, done == s.cfg.steps
    save = done % cfg.save_every == 0 or last or done == cfg.decay_start
    export = done % (cfg.export_every or cfg.save_every) == 0 or last or done in cfg.export_steps
    extra, values = {}, {}
    if cfg.eval_every and s.val_windows is not None and (done % cfg.eval_every == 0 or last):
        with s.log.timer("eval"):
            extra["val_ce"] = validation_ce(
                s.module.model, s.val_windows, s.micro, s.dist, s.amp, s.cfg.ce_chunk_tokens
            )
    probed = bool(cfg.probe_every and s.probe_windows is not None and _probe_step(cfg, done))
    if probed:
        with s.log.timer("probe"):
            values = geometry_probe(s.module.model, s.probe_windows, s.dist, s.amp)  # {} on ranks other than 0
    # decided from what every rank knows alike: flush all-reduces
    if done % cfg.log_every == 0 or last or extra or probed or save or export:
        s.log.flush(done, lr, extra, values)  # checks every step since the last read before anything is saved
    if save:
        with s.log.timer("save"):
            trainer = {"config": cfg.to_dict(), "decay_start": cfg.decay_start, "consumed_order_sha256": s.consumed_sha}
            s.ckpt.save(done, s.module, s.opt, s.sched, trainer)
    if export:
        with s.log.timer("export"):
            s.ckpt.export(done, s.module, s.data.tokenizer)


def finish(s: TrainState) -> dict:
    if s.dist.is_main:
        provenance = json.loads((s.out / "provenance.json").read_text())
        provenance.update(consumed_order_sha256=s.consumed_sha, consumed_steps=s.cfg.steps)
        write_json(s.out / "provenance.json", provenance)
    s.dist.barrier()
    return {"out": str(s.out), "step": s.cfg.steps, "last": s.log.last, "init_weights_sha256": s.init_sha}


def setup(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    extend_from: str | Path | None = None,
) -> TrainState:
    """Check the run, tokenise, start the processes, build the sharded model, restore a state: the train state."""
    check_torch()
    out = Path(out)
    has_content = check_out_dir(out, resume, overwrite)
    if resume and extend_from is not None:
        raise UserError("--resume and --extend-from exclude each other (resume an extension with --resume alone)")
    start_state = latest_state(out) if resume else None
    if start_state:
        check_resume_config(cfg, start_state[1]["config"], start_state[0])
    elif resume and (out / "provenance.json").exists():  # an extension killed before its first save
        extend_from = json.loads((out / "provenance.json").read_text()).get("extended_from") or extend_from
    if resume and not start_state and extend_from is None and is_main_process():
        print(f"note: --resume: no training state in {out / 'state'} yet; starting from step 0", file=sys.stderr)
    if extend_from is not None:
        start_state = extension_point(Path(extend_from), cfg)

    hf_config(cfg)  # settings that cannot work fail here, before minutes of tokenising
    cfg.batch_split(launch_world())  # ... and a batch that cannot split over the processes torchrun starts
    cache = Path(cfg.data.cache_dir or cache_dir or out.parent / "data")
    data = prepare_data(cfg.data, cache, is_main=is_main_process(), wait_s=cfg.dist_timeout_s)
    configure_kernels(cfg)  # TF32, deterministic kernels: before the first CUDA work
    dist = Dist(cfg.device, cfg.dist_timeout_s)  # after tokenising: no rank waits in a collective meanwhile
    config = hf_config(cfg, data.tokenizer)
    # config.yaml records what ran, resolved
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, dist.device),
                              release_host_memory=host_memory_policy(cfg))  # fmt: skip
    if cfg.precision == "bf16" and dist.device.type == "cpu" and cpu_bf16_is_emulated() and is_main_process():
        print("warning: precision=bf16 on a CPU where torch has no bf16 matmul kernel (no AVX-512 BW/VL/DQ): "
              "it emulates them, ~50x slower than fp32; precision=auto picks fp32 here", file=sys.stderr)  # fmt: skip
    amp = autocast_dtype(cfg.precision, dist.device)
    # the micro-batch sized to this device as `nitp-train plan` sizes it; refused here if it cannot fit
    cfg = resolve_run(cfg, dist.world, config.vocab_size, device_memory(dist.device))
    per_rank, accum, micro = cfg.batch_split(dist.world)
    torch.manual_seed(cfg.seed)
    module = build_meta_module(cfg, config)
    sampler = WindowSampler(data.train, cfg.seq_len, cfg.order_seed)
    prepare_out_dir(out, replace=has_content and overwrite and not resume, dist=dist)

    compile_layers(module, cfg)
    shard(module, cfg, dist, amp)  # FSDP2 on the meta device: nothing is allocated yet
    init_sha = materialise(module, cfg, config, dist.device, init=start_state is None)
    wrapped = replicate(module, cfg, dist)  # DDP, when several processes and no FSDP (fully_shard wraps in place)
    opt, sched = make_optimizer(cfg, module, dist.device)  # after sharding: FSDP2 swaps parameters for DTensors
    ckpt = Checkpointer(out, cfg, dist)
    start, consumed_sha = 0, ""
    if start_state:
        state_dir, info = start_state
        ckpt.load(state_dir, module, opt, sched, info)
        start, consumed_sha = info["step"], info["consumed_order_sha256"]

    val_windows = fixed_windows(data.val, cfg.seq_len, cfg.eval_windows)
    probe_source = data.val if len(data.val) >= cfg.seq_len else data.train
    probe_windows = fixed_windows(probe_source, cfg.seq_len, cfg.probe_batch)
    if dist.is_main:
        dump_config(cfg, out / "config.yaml")
        write_provenance(out, cfg, data, sampler, init_sha, config, dist, amp, start_state, extend_from is not None)
        _truncate_metrics(out / "metrics.jsonl", start, source=Path(extend_from) if extend_from else None)
    flops = {}
    if dist.is_main:
        record = json.loads((out / "provenance.json").read_text())
        flops = {"ours": record["train_flops_per_token"], "torchtitan": record.get("train_flops_per_token_torchtitan")}
    peak, _ = device_peak(dist.device, cfg.peak_tflops, amp) if dist.is_main else (None, "")
    bar = _progress_bar(cfg, out, start) if progress and dist.is_main else None
    log = StepLog(out, cfg, dist, flops, peak, start, bar)
    return TrainState(cfg, out, dist, data, sampler, module, wrapped, opt, sched, ckpt, log, amp, per_rank, accum,
                      micro, start, consumed_sha, val_windows, probe_windows, init_sha)  # fmt: skip


# ---------------------------------------------------------------------------- pieces of the run


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory the device has, to size the micro-batch by; None on a CPU (not sized)."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def _no_sync(wrapped, sync: bool):
    """Gradients are reduced only when `sync`: DDP's no_sync, FSDP2's set_requires_gradient_sync (under
    fsdp_grad_sync=last_micro, the last micro-batch of a step; under every_micro, every micro-batch)."""
    if hasattr(wrapped, "set_requires_gradient_sync"):  # an FSDPModule
        wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()


def _probe_step(cfg: TrainConfig, done: int) -> bool:
    return done % cfg.probe_every == 0 or done == 1 or done == cfg.steps


def _progress_bar(cfg: TrainConfig, out: Path, start: int):
    from tqdm.auto import tqdm

    desc = f"{out.name} ({cfg.objective.name})"
    return tqdm(total=cfg.steps, initial=start, desc=desc, unit="step", dynamic_ncols=True)


def write_provenance(
    out: Path, cfg, data, sampler, init_sha: str, config, dist: Dist, amp, start_state, extended: bool
) -> None:
    """provenance.json: what pairs the arms (hashes), and what a report needs about the run (FLOPs, schedule)."""
    from nitp_train.flops import flops_per_token

    path = out / "provenance.json"
    if start_state and not extended:  # a resume keeps the run's record
        return
    order = hashlib.sha256(
        json.dumps([sampler.sample_ids(s, cfg.global_batch) for s in range(min(cfg.steps, 64))]).encode()
    )
    record = {}
    if extended:  # the source run's hashes (init, order) are this run's too
        source = start_state[0].parent.parent / "provenance.json"
        record = json.loads(source.read_text()) if source.exists() else {}
        record.pop("consumed_order_sha256", None)
        record.pop("consumed_steps", None)
        record["extended_from"] = str(start_state[0])
    # Appendix G for this exact config: the NTP baseline and what NITP (with this projector) adds to it
    flops = flops_per_token(
        resolved_preset(cfg, config.vocab_size),
        seq_len=cfg.seq_len,
        projector=cfg.objective.projector,
        projector_mult=cfg.objective.projector_mult,
    )
    nitp_extra = flops.exact_nitp_extra if cfg.objective.name == "nitp" else 0
    record.update({
        "seed": cfg.seed,
        "trainer_git": git_commit(),
        "init_weights_sha256": record.get("init_weights_sha256", init_sha),
        "data_sha256": data.meta["sha256_train"],
        "order_sha256": order.hexdigest(),
        "data_dir": str(data.dir),
        "vocab_size": config.vocab_size,
        "world_size": dist.world,
        "parallel": cfg.parallel if dist.world > 1 else "none",
        "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "objective": cfg.objective.to_dict(),
        "schedule": {"steps": cfg.steps, "tokens": cfg.tokens, "warmup_steps": cfg.optim.warmup_steps,
                     "decay_start": cfg.decay_start, "decay_type": cfg.optim.decay_type},  # fmt: skip
        "flops": flops.to_dict(),
        # what this arm's steps cost per token: the baseline, plus the NITP extra only in an NITP arm
        "train_flops_per_token": flops.exact_baseline + nitp_extra,
        # the same in torchtitan's convention (attention over all T keys), for its MFU (docs/training.md, "Speed")
        "train_flops_per_token_torchtitan": flops.torchtitan_baseline + nitp_extra,
    })  # fmt: skip
    write_json(path, record)


# ---------------------------------------------------------------------------- run dirs, resume and extension


def write_json(path: Path, record: dict) -> None:
    """Written whole or not at all (a tmp file renamed into place): another process may be reading it, e.g.
    the other arm of a pair checking the pairing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse an existing run dir without --resume/--overwrite; True when it has content. Writes nothing.

    A dir that holds only token caches (`data/`) is not a run: a corrected rerun may use it.
    """
    has_content = out.exists() and any(p.name != "data" for p in out.iterdir())
    if has_content and not resume and not overwrite:
        raise UserError(f"{out} exists; pass --resume to continue it or --overwrite to start over (deletes it)")
    return has_content


def prepare_out_dir(out: Path, replace: bool, dist: Dist) -> None:
    """Create (or, with `replace`, recreate) the run dir: only once data and model are known to be good."""
    dist.barrier()
    if replace and dist.is_main:
        for p in out.iterdir():
            if p.name != "data":  # a token cache beside the arms is reusable data, not results
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    dist.barrier()
    if dist.is_main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    dist.barrier()


def with_defaults(saved: dict) -> dict:
    """A saved config.yaml with every field this trainer knows: one added after the run started reads as its
    default, so a newer trainer can resume (or pair) an older run unless the run's meaning would change."""
    return merge(TrainConfig().to_dict(), saved)


def _config_changes(cfg: TrainConfig, saved: dict, allowed: set[str]) -> list[str]:
    now = cfg.to_dict()
    saved = with_defaults(saved)  # a study spans sessions, and the trainer may gain fields between them
    return sorted(k for k in set(now) | set(saved) if k not in allowed and now.get(k) != saved.get(k))


def check_resume_config(cfg: TrainConfig, saved: dict, state: Path) -> None:
    """A resumed run must be the same run: refuse any other config change (it would silently mix two runs)."""
    changed = _config_changes(cfg, saved, RESUMABLE_CHANGES)
    if "steps" in changed or "tokens" in changed:
        horizon = saved["steps"]
        raise UserError(
            f"--resume keeps the run's LR horizon of {horizon} steps (fixed when it started; {cfg.steps} asked): "
            f"to run longer, extend it into a new dir from a state before its decay: "
            f"nitp-train run --out NEW_DIR --extend-from {state.parent.parent} --steps N (docs/training.md, Schedule)"
        )
    if changed:
        diffs = "; ".join(f"{k}: {saved.get(k)!r} -> {cfg.to_dict().get(k)!r}" for k in changed)
        raise UserError(
            f"--resume from {state} with a different config ({diffs}); give the original settings "
            f"(see its config.yaml) or start a new run dir"
        )


def extension_point(source: Path, cfg: TrainConfig) -> tuple[Path, dict]:
    """The training state an extension starts from: before the source run's decay, same run but a longer horizon."""
    if (source / "state").is_dir():  # an arm dir: its last state taken before the decay began
        states = state_dirs(source)
        if not states:
            raise UserError(f"--extend-from {source}: no training state there")
        decay_start = read_trainer(states[-1])["decay_start"]
        before = [s for s in states if step_of(s) <= decay_start]
        if not before:
            raise UserError(f"--extend-from {source}: no training state before its decay (step {decay_start}) is kept")
        state = before[-1]
    elif (source / "trainer.json").exists():
        state = source
    else:
        raise UserError(
            f"--extend-from {source}: not an arm dir (with state/) nor a training state dir (with trainer.json)"
        )
    info = read_trainer(state)
    saved = info["config"]
    if step_of(state) > info["decay_start"]:
        before = [s for s in state_dirs(state.parent.parent) if step_of(s) <= info["decay_start"]]
        hint = f"the last state it could extend from is {before[-1]}" if before else "no state before the decay is kept"
        raise UserError(
            f"--extend-from {state}: taken after its decay began (step {info['decay_start']}), "
            f"so its learning rate is already decaying; {hint}"
        )
    if cfg.steps <= saved["steps"]:
        raise UserError(f"--extend-from needs a longer horizon: steps={cfg.steps} <= the source run's {saved['steps']}")
    changed = _config_changes(cfg, saved, RESUMABLE_CHANGES | {"steps", "tokens"})
    if changed:
        raise UserError(
            f"--extend-from {state}: the config differs in {', '.join(changed)}; an extension changes only steps"
        )
    return state, info


def _interrupted(out: Path, step: int) -> Interrupted:
    states = state_dirs(out)
    kept = f"the last intact training state is {states[-1]}" if states else "no training state was saved yet"
    return Interrupted(f"interrupted at step {step + 1}; {kept}: rerun the same command with --resume to continue")


def _non_finite(e: NonFinite, out: Path) -> UserError:
    kept = state_dirs(out)
    return UserError(
        f"{e}: their updates were skipped on the device and max_consecutive_skips={e.limit} ends the run; "
        f"last good state: {kept[-1] if kept else 'none'}; lower optim.lr or check the data"
    )


def _truncate_metrics(path: Path, step: int, source: Path | None = None) -> None:
    """Keep the records up to `step` (dropping those a resume will redo); an extension copies its source's."""
    if source is not None:
        arm = source if (source / "metrics.jsonl").exists() else source.parent.parent
        if (arm / "metrics.jsonl").exists():
            shutil.copy(arm / "metrics.jsonl", path)
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
