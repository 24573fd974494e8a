"""Training configuration: nested dataclasses, built in layers (preset < YAML file < --set key=value)."""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import yaml

from nitp_train.errors import UserError
from nitp_train.objective import ObjectiveConfig
from nitp_train.presets import get_preset


@dataclass
class ModelConfig:
    preset: str = "tiny-dense"
    hf_overrides: dict = field(default_factory=dict)  # any transformers config field, e.g. num_hidden_layers


@dataclass
class DataConfig:
    path: str | None = (
        None  # files / globs / dirs (.txt, .jsonl[.gz] "text", .parquet) or an HF dataset id; None = built-in corpus
    )
    validation: str | None = None  # held-out text (same forms); None = built-in validation split, or the tail of `path`
    val_fraction: float = 0.01  # share of the token stream held out when `validation` is not given
    tokenizer: str | None = (
        None  # HF tokenizer dir or id, or train:VOCAB (byte-level BPE on the corpus); None = the preset's
    )
    text_field: str = "text"
    revision: str | None = None  # an HF dataset's revision (commit, tag, branch) for `path`/`validation` ids; recorded
    cache_dir: str | None = None  # tokenised corpus; default <out>/../data, shared by the arms of a pair
    max_docs: int | None = None  # read at most this many documents (quick experiments)


@dataclass
class OptimConfig:
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 30
    decay_ratio: float = 0.2  # WSD: the last 20 % of steps decay
    decay_type: str = "linear"  # linear | cosine | 1-sqrt (transformers.get_wsd_schedule)
    min_lr_ratio: float = 0.0


@dataclass
class LogConfig:
    tensorboard: bool = False  # the metrics.jsonl scalars also as TensorBoard event files in <arm>/tb


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # The run's length, and so its LR horizon: fixed when the run starts (docs/training.md, "Schedule").
    # Give `steps` or `tokens` (the paper presets give tokens: steps = tokens / (global_batch x seq_len)).
    steps: int = 1000
    tokens: float | None = None  # resolved: always steps x global_batch x seq_len once loaded
    global_batch: int = 16  # sequences per optimiser step, over all processes and accumulation
    # sequences per forward pass per process; None = auto: on a GPU the largest that fits its memory
    # (nitp_train.plan.resolve_micro_batch, the planner's model), elsewhere 8; written resolved to config.yaml
    micro_batch: int | None = None
    seq_len: int = 256
    seed: int = 1234
    data_seed: int | None = None  # the data order's seed; None = `seed` (set it to hold the order fixed across seeds)
    save_every: int = 250  # sharded training state (for --resume) every N steps and at the end
    keep_last: int = 2  # training states kept (older ones deleted; 0 = keep all)
    export_every: int | None = None  # HF export (checkpoints/step-N) every N steps and at the end; None = save_every
    keep_exports: int = 0  # HF exports kept: the newest N (0 = keep all), plus every step in `export_steps`
    export_steps: list[int] = field(default_factory=list)  # exports kept whatever keep_exports says (e.g. [1000])
    export_dtype: str = "fp32"  # fp32 | bf16: the dtype of the HF export's weights (paper presets: bf16)
    async_checkpoint: bool = False  # write training state in a background thread (torch.distributed.checkpoint)
    # Every logged step reads the device on the host (a sync, plus all-reduces under torchrun): 10 keeps that
    # to at most 1 per 10 steps; evaluations, probes, saves and exports log too.
    log_every: int = 10
    max_consecutive_skips: int = 20  # non-finite steps are skipped and counted; this many in a row end the run
    eval_every: int = 100  # validation CE; 0 = never
    eval_windows: int = 32  # validation windows of seq_len tokens (the same set for every world size / micro-batch)
    probe_every: int = 50  # geometry probes on a fixed batch; 0 = never
    probe_batch: int = 8
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda
    parallel: str = "ddp"  # ddp | fsdp (torch FSDP2 fully_shard per decoder layer; gloo on CPU, NCCL on GPU)
    fsdp_param_dtype: str = "auto"  # FSDP mixed precision: parameters for compute (auto = bf16 where autocast is bf16)
    fsdp_reduce_dtype: str = "fp32"  # FSDP mixed precision: gradient reductions
    # under accumulation: reduce-scatter once a step (last_micro: fewer collectives, but every rank keeps the
    # whole model's unsharded fp32 gradients between micro-batches) or once per micro-batch (every_micro:
    # gradients stay sharded); auto = last_micro where the planner finds it fits the GPU, else every_micro
    # (and on a CPU); under DDP auto = last_micro (no_sync), and every_micro all-reduces every micro-batch
    fsdp_grad_sync: str = "auto"  # auto | last_micro | every_micro
    # glibc's host allocator: always = freed buffers of 16 MiB and more go back to the OS (FSDP's per-layer
    # buffers would otherwise stay in the heap); never = freed buffers stay for reuse (a CPU step's
    # activations are not faulted in afresh each time); glibc = its own thresholds; auto = always under FSDP,
    # never on a CPU otherwise, glibc on a GPU; recorded resolved (docs/training.md, "Host memory and speed")
    release_host_memory: str = "auto"  # auto | always | never | glibc
    # the LM head and cross-entropy over this many positions at a time, so the full [tokens, vocab] logits
    # never exist (nitp_train/loss.py); 0 = HF's loss over the full logits
    ce_chunk_tokens: int = 1024
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward (HF gradient checkpointing)
    dist_timeout_s: int = 1800  # process-group timeout (collectives that wait longer fail with a clear error)
    compile: bool = False  # torch.compile each decoder layer (in place: parameter names unchanged)
    deterministic: bool = (
        False  # deterministic kernels (torch.use_deterministic_algorithms, cuBLAS workspace, math SDPA)
    )
    peak_tflops: float | None = None  # the device's peak for MFU; None = a table of GPUs, or measured on a CPU

    def to_dict(self) -> dict:
        d = asdict(self)
        d["objective"] = self.objective.to_dict()
        d["optim"]["betas"] = list(self.optim.betas)
        return d

    def batch_split(self, world: int) -> tuple[int, int, int]:
        """(sequences per process, accumulation steps, micro-batch) of one optimiser step on `world` processes.

        The micro-batch is at most the per-process share; the global batch must split evenly. An unset
        micro-batch (auto) is here the largest divisor of the share up to 8 (on a GPU, nitp_train.plan sizes it).
        """
        per_rank, rem = divmod(self.global_batch, world)
        micro = min(self.micro_batch, per_rank) if self.micro_batch else 1
        if self.micro_batch is None:  # auto, unresolved (no device memory to size it by): at most 8, and splitting
            micro = max(m for m in range(1, min(8, per_rank) + 1) if per_rank % m == 0) if per_rank else 1
        if rem or not per_rank or per_rank % micro:
            raise UserError(
                f"global_batch={self.global_batch} must split evenly over {world} process(es) x micro_batch={micro}"
            )
        return per_rank, per_rank // micro, micro

    @property
    def order_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def decay_steps(self) -> int:
        return int(round(self.steps * self.optim.decay_ratio))

    @property
    def decay_start(self) -> int:
        """The first step whose learning rate is below the peak (WSD: the stable phase ends here)."""
        return self.steps - self.decay_steps

    def validate(self) -> TrainConfig:
        for name in ("steps", "global_batch", "seq_len", "save_every", "log_every", "eval_windows", "probe_batch",
                     "dist_timeout_s", "max_consecutive_skips"):  # fmt: skip
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be >= 1")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int) or self.micro_batch < 1):
            raise UserError(
                f"micro_batch={self.micro_batch!r} must be a whole number >= 1 (or unset: sized to the GPU)"
            )
        for name in ("eval_every", "probe_every", "keep_last", "keep_exports"):
            if getattr(self, name) < 0:
                raise UserError(
                    f"{name}={getattr(self, name)} must be >= 0 (0 = {'never' if name.endswith('every') else 'keep all'})"
                )
        if not isinstance(self.export_steps, list) or not all(isinstance(s, int) and s >= 1 for s in self.export_steps):
            raise UserError(f"export_steps={self.export_steps!r} must be a list of steps >= 1, e.g. [1000, 5000]")
        if self.export_dtype not in ("fp32", "bf16"):
            raise UserError(f"export_dtype={self.export_dtype!r} is unknown; choose fp32 or bf16")
        if self.ce_chunk_tokens < 0:
            raise UserError(f"ce_chunk_tokens={self.ce_chunk_tokens} must be >= 0 (0 = the full logits)")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise UserError(f"peak_tflops={self.peak_tflops} must be > 0 (or unset)")
        if self.export_every is not None and self.export_every < 1:
            raise UserError(f"export_every={self.export_every} must be >= 1 (or unset: every save_every steps)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"precision={self.precision!r} is unknown; choose auto, bf16 or fp32")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"device={self.device!r} is unknown; choose auto, cpu or cuda")
        if self.parallel not in ("ddp", "fsdp"):
            raise UserError(f"parallel={self.parallel!r} is unknown; choose ddp or fsdp")
        if self.fsdp_grad_sync not in ("auto", "last_micro", "every_micro"):
            raise UserError(
                f"fsdp_grad_sync={self.fsdp_grad_sync!r} is unknown; choose auto, last_micro or every_micro"
            )
        if self.release_host_memory not in ("auto", "always", "never", "glibc"):
            raise UserError(
                f"release_host_memory={self.release_host_memory!r} is unknown; choose auto, always, never or glibc"
            )
        for name in ("fsdp_param_dtype", "fsdp_reduce_dtype"):
            if getattr(self, name) not in ("auto", "bf16", "fp32"):
                raise UserError(f"{name}={getattr(self, name)!r} is unknown; choose auto, bf16 or fp32")
        self._validate_optim()
        return self

    def _validate_optim(self) -> None:
        """Every optimiser and schedule setting, checked here so that torch and transformers never see a bad one."""
        o = self.optim
        if not o.lr > 0 or o.lr == float("inf"):
            raise UserError(f"optim.lr={o.lr} must be a finite number > 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise UserError(f"optim.betas={list(o.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
        if not o.weight_decay >= 0:
            raise UserError(f"optim.weight_decay={o.weight_decay} must be >= 0")
        if not o.grad_clip > 0:
            raise UserError(f"optim.grad_clip={o.grad_clip} must be > 0")
        if not 0 <= o.min_lr_ratio <= 1:
            raise UserError(f"optim.min_lr_ratio={o.min_lr_ratio} must lie in [0, 1]")
        if self.optim.decay_type not in ("linear", "cosine", "1-sqrt"):
            raise UserError(f"optim.decay_type={self.optim.decay_type!r} is unknown; choose linear, cosine or 1-sqrt")
        if not 0 <= self.optim.decay_ratio <= 1:
            raise UserError(f"optim.decay_ratio={self.optim.decay_ratio} must lie in [0, 1]")
        if self.optim.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps={self.optim.warmup_steps} must be >= 0")
        if self.optim.warmup_steps > self.decay_start:  # never clip the warm-up silently
            raise UserError(
                f"optim.warmup_steps={self.optim.warmup_steps} does not fit before the decay of a {self.steps}-step run "
                f"(decay_ratio {self.optim.decay_ratio} starts it at step {self.decay_start}); "
                f"lower optim.warmup_steps or raise steps/tokens"
            )


def _defaults_from_preset(preset_name: str) -> dict:
    p = get_preset(preset_name)
    d: dict = {"model": {"preset": preset_name}, "objective": {}, "optim": {}, "data": {}}
    if "target_layer" in p.nitp:
        d["objective"]["target_layer"] = p.nitp["target_layer"]
    if "lambda" in p.nitp:
        d["objective"]["lambda"] = p.nitp["lambda"]
    for key in ("lr", "warmup_steps"):
        if key in p.train:
            d["optim"][key] = p.train[key]
    for key in ("global_batch", "seq_len", "steps", "tokens", "save_every", "eval_every", "probe_every", "micro_batch",
                "activation_checkpointing", "parallel", "precision", "export_every", "keep_exports", "export_dtype"):  # fmt: skip
        if key in p.train:
            d[key] = p.train[key]
    if p.tokenizer:
        d["data"]["tokenizer"] = p.tokenizer
    return d


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-3 (no dot) as a string; configs mean a float."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _yaml(text: str):
    return yaml.load(text, Loader=_YamlLoader)


def parse_set(items: list[str]) -> dict:
    """['objective.lambda=0.8', 'steps=10'] -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set objective.lambda=0.8")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _yaml(value) if value != "" else None
    return out


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "hf_overrides":
            out[k] = merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _build(cls, d: dict, prefix: str = ""):
    if cls is ObjectiveConfig:
        try:
            return ObjectiveConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise UserError(str(e)) from e
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise UserError(
            f"unknown config field(s) {', '.join(prefix + u for u in unknown)}; known under "
            f"{prefix or 'top level'}: {', '.join(known)}"
        )
    kwargs = {}
    for name, value in d.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            if not isinstance(value, dict):
                raise UserError(f"{prefix}{name} is a section; set its fields, e.g. {prefix}{name}.<field>=...")
            kwargs[name] = _build(type(default), value, prefix + name + ".")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{prefix}{name}={value!r} must be true or false")
            kwargs[name] = value
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise UserError(f"{prefix}{name}={value!r} must be a list, e.g. {list(default)}")
            kwargs[name] = tuple(_number(v, float, prefix + name) for v in value)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            kwargs[name] = _number(value, type(default), prefix + name)
        elif default is None and value is not None and known[name].type in ("int | None", "float | None"):
            kwargs[name] = _number(value, int if known[name].type.startswith("int") else float, prefix + name)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _number(value, kind: type, name: str):
    """A number of the field's type: 1e12 steps is an int; a float where an int is meant must be whole."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        return int(number) if kind is int and number == int(number) else number
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} must be a number") from None


def load_config(config_file: str | Path | None = None, sets: list[str] | None = None, **top: object) -> TrainConfig:
    """Resolve a TrainConfig: dataclass defaults < preset < YAML file < keyword options < --set."""
    file_dict: dict = {}
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise UserError(f"--config {path}: no such file")
        file_dict = _yaml(path.read_text()) or {}
        if not isinstance(file_dict, dict):
            raise UserError(f"--config {path}: expected a YAML mapping of config fields")
    set_dict = parse_set(sets or [])
    given = {k: v for k, v in top.items() if v is not None}
    layered = merge(merge(file_dict, _nest(given)), set_dict)
    preset = layered.get("model", {}).get("preset", ModelConfig.preset)
    preset_layer = _defaults_from_preset(preset)
    full = merge(preset_layer, layered)
    _resolve_length(full, layered, preset_layer)
    cfg = _build(TrainConfig, full)
    if "warmup_steps" not in layered.get("optim", {}):  # the user's own warm-up is never changed
        fit_warmup(cfg)
    return cfg.validate()


def fit_warmup(cfg: TrainConfig) -> None:
    """A default warm-up (the preset's) longer than the stable phase of a short run becomes 10 % of the run.

    So a smoke test (`--steps 8`) runs, as in nanoGPT and torchtitan; the value is printed once and
    written to config.yaml. A warm-up the user set that does not fit stays an error (`validate`).
    """
    if cfg.optim.warmup_steps <= cfg.decay_start:
        return
    fitted = min(max(cfg.steps // 10, 1), cfg.decay_start)
    from nitp_train.launch import is_main_process

    if is_main_process():
        print(
            f"note: optim.warmup_steps {cfg.optim.warmup_steps} -> {fitted}: the default warm-up does not fit before "
            f"the decay of a {cfg.steps}-step run (step {cfg.decay_start}); set optim.warmup_steps to choose",
            file=sys.stderr,
        )
    cfg.optim.warmup_steps = fitted


def _resolve_length(full: dict, user: dict, preset: dict) -> None:
    """steps or tokens: the highest layer that gives one decides; tokens = steps x global batch x seq_len."""
    per_step = _number(full.get("global_batch", TrainConfig.global_batch), int, "global_batch") * _number(
        full.get("seq_len", TrainConfig.seq_len), int, "seq_len"
    )
    if user.get("steps") is not None and user.get("tokens") is not None:
        steps, tokens = _number(user["steps"], int, "steps"), _number(user["tokens"], float, "tokens")
        if steps * per_step != tokens:  # a written config.yaml has both, consistent
            raise UserError("give steps or tokens, not both (tokens = steps x global_batch x seq_len)")
    source = user if user.get("steps") is not None or user.get("tokens") is not None else preset
    tokens = source.get("tokens")
    if source.get("steps") is None and tokens is not None:
        tokens = _number(tokens, float, "tokens")
        if tokens < per_step:
            raise UserError(f"tokens={tokens:g} is less than one step of global_batch x seq_len = {per_step} tokens")
        full["steps"] = int(round(tokens / per_step))
    full["tokens"] = _number(full.get("steps", TrainConfig.steps), int, "steps") * per_step


def _nest(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def dump_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
