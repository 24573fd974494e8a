"""A pair: the NTP baseline and one auxiliary-objective arm, same seed, init, data and order."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from nitp_train.config import TrainConfig
from nitp_train.errors import UserError
from nitp_train.train import Dist, check_out_dir, train


def arm_configs(cfg: TrainConfig) -> dict[str, TrainConfig]:
    """{'ntp': baseline, <objective name>: the configured objective} (nitp by default)."""
    other = cfg.objective.name if cfg.objective.name != "ntp" else "nitp"
    aux = (
        cfg
        if cfg.objective.name != "ntp"
        else dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="nitp"))
    )
    ntp = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="ntp"))
    return {"ntp": ntp, other: aux}


def train_pair(
    cfg: TrainConfig, out: str | Path, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict:
    out = Path(out)
    arms = arm_configs(cfg)
    dist = Dist(cfg.device)  # under torchrun every process runs this; the main one writes
    check_out_dir(out, resume, overwrite)
    shared = {k: v for k, v in cfg.to_dict().items() if k != "objective"}
    record = {
        "name": out.name,
        "seed": cfg.seed,
        "shared": shared,
        "arms": {name: c.objective.to_dict() for name, c in arms.items()},
    }
    dist.barrier()  # every rank has checked before the main one writes
    if dist.is_main:
        if overwrite and not resume and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "pair.json").write_text(json.dumps(record, indent=2))
    dist.barrier()

    summaries = {
        name: train(c, out / name, resume=resume, cache_dir=out / "data", progress=progress) for name, c in arms.items()
    }
    record["paired"] = check_paired(out, list(arms))
    if dist.is_main:
        (out / "pair.json").write_text(json.dumps(record, indent=2))
    return {"arms": summaries, "paired": record["paired"]}


def check_paired(out: Path, arms: list[str]) -> dict:
    """Compare the arms' provenance: same initial backbone weights, token file, planned sample order and
    (once trained) the hash chain of the batches each arm actually consumed."""
    prov = {a: json.loads((out / a / "provenance.json").read_text()) for a in arms}
    first = prov[arms[0]]
    keys = ["init_weights_sha256", "data_sha256", "order_sha256", "seed"]
    if all("consumed_order_sha256" in p for p in prov.values()):  # written when an arm finishes
        keys.append("consumed_order_sha256")
    result = {key: all(p[key] == first[key] for p in prov.values()) for key in keys}
    if not all(result.values()):
        raise UserError(
            f"{out}: arms are not paired ({result}); were they trained with different seeds, data or presets?"
        )
    return result
