"""Checkpoints: sharded training state (torch.distributed.checkpoint) for resume, HF exports for analysis.

    <arm>/state/step-NNNNNN/        training state: model + projector + AdamW, every rank its own shard (DCP),
                                    and trainer.json (step, schedule, data position, RNG, config); keep_last kept
    <arm>/checkpoints/step-NNNNNN/  HF export: save_pretrained dir + tokenizer (+ nitp_projector.safetensors),
                                    in export_dtype; every export_every steps; keep_exports kept (+ export_steps)

DCP state is keyed by parameter name and stores each tensor's global shape, so a state written by
one layout loads into any other (1 process, DDP, FSDP on N processes): `dcp.load` reads the slices
each rank needs. Both kinds are written to a `.tmp-` dir and renamed into place once every rank has
finished, so a kill during a save never leaves a dir that `--resume` or an analysis would take.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from nitp_train.distributed import Dist, uses_fsdp
from nitp_train.errors import UserError

TRAINER_FILE = "trainer.json"
OLD_STATE_FILE = "trainer_state.pt"  # nitp <= 0.1: a gathered pickle inside each HF checkpoint


def state_dirs(out: Path) -> list[Path]:
    """Complete training states, oldest first (a dir counts once its trainer.json is in place)."""
    return sorted(p for p in (out / "state").glob("step-*") if p.is_dir() and (p / TRAINER_FILE).exists())


def step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def read_trainer(state: Path) -> dict:
    """trainer.json of a state dir, or a one-line error naming the dir and the previous intact one."""
    try:
        info = json.loads((state / TRAINER_FILE).read_text())
        if not (state / ".metadata").exists():
            raise ValueError("its DCP .metadata file is missing")
        return info
    except (OSError, ValueError) as e:
        raise unreadable(state, e) from e


def unreadable(state: Path, err: Exception, loading: bool = False) -> UserError:
    earlier = [s for s in state_dirs(state.parent.parent) if step_of(s) < step_of(state)]
    offer = (
        f"the previous intact state is {earlier[-1]}: remove {state} (or move it away) and rerun with --resume"
        if earlier
        else "no earlier state exists: start over with --overwrite"
    )
    first = (str(err).splitlines() or [""])[0][:300]
    what = "could not be loaded into this run's model and optimizer" if loading else "is unreadable"
    hint = " (same preset, objective and nitp version?); if its files are damaged, " if loading else "; "
    return UserError(f"training state {state} {what} ({err.__class__.__name__}: {first}){hint}{offer}")


def latest_state(out: Path) -> tuple[Path, dict] | None:
    """The newest complete training state and its trainer.json; None for a fresh run dir."""
    if any((out / "checkpoints").glob(f"step-*/{OLD_STATE_FILE}")) and not state_dirs(out):
        raise UserError(
            f"{out} was written by an older nitp (trainer_state.pt); it cannot be resumed: start a new run dir"
        )
    states = state_dirs(out)
    return (states[-1], read_trainer(states[-1])) if states else None


def _state_dicts(module, opt) -> dict:
    """Keyed by parameter name; plain tensors, or DTensor shards under FSDP: the same calls for every layout."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(module), "optimizer": get_optimizer_state_dict(module, opt)}


class Checkpointer:
    """Saves and restores one arm's training state, writes its HF exports, applies retention."""

    def __init__(self, out: Path, cfg, dist: Dist):
        self.out, self.cfg, self.dist = out, cfg, dist
        self.fsdp = uses_fsdp(cfg, dist)
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.export_dtype]  # of the HF export
        self.no_dist = dist.world == 1  # one process: DCP without collectives
        if self.no_dist:  # ... which is what DCP warns it assumes
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        self._pending = None  # (future, tmp dir, final dir) of an asynchronous save not yet finalised
        self._async_group = None
        if cfg.async_checkpoint and dist.world > 1:
            # background collectives on their own (gloo) group, never interleaved with training's
            self._async_group = torch.distributed.new_group(backend="gloo")

    # -- training state

    def save(self, step: int, module, opt, sched, trainer: dict) -> None:
        import torch.distributed.checkpoint as dcp

        self.wait()
        final = self.out / "state" / f"step-{step:06d}"
        tmp = final.with_name(f".tmp-{final.name}")
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.dist.barrier()
        state = _state_dicts(module, opt)
        state["rng_cpu"] = torch.get_rng_state()
        info = {**trainer, "step": step, "scheduler": sched.state_dict(), "world_size": self.dist.world}
        if self.cfg.async_checkpoint:
            future = dcp.async_save(
                state, checkpoint_id=str(tmp), process_group=self._async_group, no_dist=self.no_dist
            )
            self._pending = (future, tmp, final, info)
        else:
            dcp.save(state, checkpoint_id=str(tmp), no_dist=self.no_dist)
            self._finalise(tmp, final, info)

    def close(self) -> None:
        if self._async_group is not None:
            torch.distributed.destroy_process_group(self._async_group)
            self._async_group = None

    def wait(self) -> None:
        """Finish an asynchronous save (at the next save and at the end of the run)."""
        if self._pending is not None:
            future, tmp, final, info = self._pending
            self._pending = None
            future.result()
            self._finalise(tmp, final, info)

    def _finalise(self, tmp: Path, final: Path, info: dict) -> None:
        self.dist.barrier()  # every rank's shard is on disk
        if self.dist.is_main:
            (tmp / TRAINER_FILE).write_text(json.dumps(info, indent=1))  # last: marks the state complete
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if self.cfg.keep_last:
                self._retain()
        self.dist.barrier()

    def _retain(self) -> None:
        """Delete all but the newest keep_last states, and the last one before the decay (an extension point)."""
        states = state_dirs(self.out)
        stable = [s for s in states if step_of(s) <= self.cfg.decay_start][-1:]
        for old in states[: -self.cfg.keep_last]:
            if old not in stable:
                (old / TRAINER_FILE).unlink()  # first: a kill mid-delete leaves a dir no resume takes
                shutil.rmtree(old)

    def load(self, state_dir: Path, module, opt, sched, info: dict) -> None:
        """Restore model, projector, AdamW and schedule into the current layout (any world size / parallel mode)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        state = _state_dicts(module, opt)
        state["rng_cpu"] = torch.get_rng_state()
        try:
            dcp.load(state, checkpoint_id=str(state_dir), no_dist=self.no_dist)
        except Exception as e:  # a truncated shard file, or a state this run's model and optimizer do not match
            raise unreadable(state_dir, e, loading=True) from e
        set_model_state_dict(module, state["model"])
        set_optimizer_state_dict(module, opt, state["optimizer"])
        sched.load_state_dict(info["scheduler"])
        torch.set_rng_state(state["rng_cpu"])

    # -- HF export

    def export(self, step: int, module, tokenizer) -> Path:
        """`checkpoints/step-N`: loads with from_pretrained; the projector beside it, never part of the model."""
        final = self.out / "checkpoints" / f"step-{step:06d}"
        tmp = final.with_name(f".tmp-{final.name}")
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.dist.barrier()
        model = module.model
        if self.fsdp and getattr(model.config, "num_experts", 0) > 0:
            self._export_by_layer(model, tmp)
        elif self.fsdp:
            self._export_sharded(model, tmp)
        elif self.dist.is_main:
            from transformers.utils import logging

            logging.disable_progress_bar()  # no "Writing model shards" bar per checkpoint
            if self.dtype == torch.float32:
                model.save_pretrained(tmp)
            else:  # a cast copy (the weights stay fp32 for training)
                sd = _cast(model.state_dict(), self.dtype)
                if model.config.tie_word_embeddings:
                    sd.pop("lm_head.weight", None)  # stored once, as HF does
                model.save_pretrained(tmp, state_dict=sd)
        projector = self._projector_state(module)
        if self.dist.is_main:
            config = copy.deepcopy(model.config)
            config.dtype = self.dtype  # what from_pretrained(dtype="auto") loads the weights as
            config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            if projector is not None:
                module.objective.save(tmp, projector)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if self.cfg.keep_exports:
                self._retain_exports()
        self.dist.barrier()
        return final

    def _retain_exports(self) -> None:
        """Delete all HF exports but the newest keep_exports and those at a step named in export_steps."""
        exports = sorted(p for p in (self.out / "checkpoints").glob("step-*") if p.is_dir())
        for old in exports[: -self.cfg.keep_exports]:
            if step_of(old) not in self.cfg.export_steps:
                shutil.rmtree(old)

    def _export_sharded(self, model, tmp: Path) -> None:
        """Each rank writes its own shards as safetensors; rank 0 then consolidates them file by file."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import HuggingFaceStorageWriter
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = _cast(get_model_state_dict(model), self.dtype)  # each rank casts its own shards
        if model.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)  # stored once, as HF does
        writer = HuggingFaceStorageWriter(path=str(tmp), save_distributed=True, enable_consolidation=True)
        dcp.save(sd, storage_writer=writer)
        if self.dist.is_main:
            shutil.rmtree(tmp / "sharded", ignore_errors=True)
            _name_for_from_pretrained(tmp)

    def _export_by_layer(self, model, tmp: Path) -> None:
        """MoE under FSDP: transformers saves fused expert tensors under per-expert keys (its reversed weight
        conversion), which DCP's HF writer would not, so the export is written one decoder layer at a time:
        every rank takes part in gathering that layer's full tensors, rank 0 converts them as save_pretrained
        does and writes them as one safetensors file, and no rank ever holds more than one layer's full
        weights (plus its own shards)."""
        import re

        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        from torch.distributed.tensor import DTensor
        from transformers.core_model_loading import revert_weight_conversion

        sd = get_model_state_dict(model)  # this rank's shards (DTensors): nothing gathered yet
        if model.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)  # stored once, as HF does
        groups: dict[str, list[str]] = {}  # "layers.<i>" or "rest" -> keys, in state-dict order
        for key in sd:
            m = re.search(r"\blayers\.(\d+)\.", key)
            groups.setdefault(f"layers.{int(m.group(1)):06d}" if m else "rest", []).append(key)
        names = sorted(groups)
        weight_map, total = {}, 0
        for i, name in enumerate(names):
            part = {}
            for key in groups[name]:  # the same keys in the same order on every rank: each gather is a collective
                value = sd[key].full_tensor() if isinstance(sd[key], DTensor) else sd[key]
                if self.dist.is_main:
                    part[key] = _cast({key: value.detach()}, self.dtype)[key].cpu()
                del value
            if self.dist.is_main:
                part = revert_weight_conversion(model, part)  # fused experts -> transformers' saved keys
                file = f"model-{i + 1:05d}-of-{len(names):05d}.safetensors"
                save_file({k: v.contiguous() for k, v in part.items()}, str(tmp / file), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(part, file))
                total += sum(v.numel() * v.element_size() for v in part.values())
            del part
        if self.dist.is_main:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def _projector_state(self, module) -> dict | None:
        """The projector's full weights on the main rank (small: 12 d^2; gathered under FSDP)."""
        if module.objective.config.name != "nitp":
            return None
        if not self.fsdp:
            return module.objective.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module.objective, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _cast(state: dict, dtype: torch.dtype) -> dict:
    """Floating-point tensors in `dtype` (no copy when they already are); others as they are."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _name_for_from_pretrained(path: Path) -> None:
    """DCP's consolidated output is model-0000i-of-0000N.safetensors + an index; one file is named as HF names it."""
    files = sorted(path.glob("model-*-of-*.safetensors"))
    if len(files) == 1:
        os.replace(files[0], path / "model.safetensors")
        (path / "model.safetensors.index.json").unlink(missing_ok=True)
