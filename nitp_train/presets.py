"""Model presets (presets.yaml): transformers configs, parameter counts on the meta device."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from nitp_train.errors import UserError

PRESETS_FILE = Path(__file__).with_name("presets.yaml")


@dataclass(frozen=True)
class Preset:
    name: str
    hf: dict  # kwargs for transformers.AutoConfig.for_model(model_type, ...)
    nitp: dict = field(default_factory=dict)  # target_layer, lambda (the paper's)
    train: dict = field(default_factory=dict)  # lr, global_batch, seq_len, warmup_steps, tokens
    tokenizer: str | None = None
    description: str = ""

    @property
    def is_moe(self) -> bool:
        return self.hf.get("num_experts", 0) > 0

    @property
    def num_layers(self) -> int:
        return self.hf["num_hidden_layers"]

    def hf_config(self, vocab_size: int | None = None, **overrides):
        """The transformers config; `vocab_size` from the tokenizer unless the preset fixes it."""
        from transformers import AutoConfig

        kwargs = dict(self.hf)
        model_type = kwargs.pop("model_type")
        if vocab_size is not None and "vocab_size" not in self.hf:
            kwargs["vocab_size"] = vocab_size
        kwargs.update(overrides)
        return AutoConfig.for_model(model_type, **kwargs)


@cache
def _all_presets() -> dict[str, Preset]:
    raw = yaml.safe_load(PRESETS_FILE.read_text())
    return {name: Preset(name=name, **spec) for name, spec in raw.items()}


def preset_names() -> list[str]:
    return list(_all_presets())


def get_preset(name: str) -> Preset:
    """A preset by name, or from a YAML file with the same fields (one preset per file)."""
    presets = _all_presets()
    if name in presets:
        return presets[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        spec = yaml.safe_load(path.read_text())
        try:
            return Preset(name=path.stem, **spec)
        except TypeError as e:
            raise UserError(f"{path}: not a preset file ({e}); see nitp_train/presets.yaml for the fields") from e
    raise UserError(f"unknown preset {name!r}; choose one of {', '.join(presets)} (or give a preset .yaml file)")


def param_counts(preset: Preset, vocab_size: int = 8192, **overrides) -> dict[str, int]:
    """Total and activated parameters, counted on the meta device (no memory is allocated).

    Activated = total minus the routed experts a token does not use: of each MoE layer's routed
    expert weights only top_k / num_experts count. Embedding and LM head are counted (tied once).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = preset.hf_config(vocab_size=vocab_size, **overrides)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = routed = 0
    for name, p in model.named_parameters():  # tied weights are yielded once
        total += p.numel()
        if ".mlp.experts." in name:
            routed += p.numel()
    unused = routed * (1 - preset.hf.get("num_experts_per_tok", 0) / max(preset.hf.get("num_experts", 1), 1))
    return {"total": total, "activated": int(round(total - unused)), "routed_experts": routed}
