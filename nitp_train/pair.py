"""A pair: the NTP baseline and one auxiliary-objective arm, same seed, init, data and order."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from nitp_train.config import TrainConfig
from nitp_train.data import prepare_data
from nitp_train.distributed import Dist
from nitp_train.errors import UserError
from nitp_train.launch import is_main_process
from nitp_train.model import hf_config
from nitp_train.train import RESUMABLE_CHANGES, check_out_dir, train, with_defaults, write_json


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


def check_arms(cfg: TrainConfig, only: list[str] | None, overwrite: bool) -> None:
    """`--arms`: names of this pair's arms, and never with --overwrite (it would delete the other arm too)."""
    if only is None:
        return
    arms = arm_configs(cfg)
    if not only or set(only) - set(arms):
        raise UserError(f"--arms {','.join(only)}: this pair's arms are {', '.join(arms)}")
    if overwrite:
        raise UserError("--arms with --overwrite would delete the other arm too; delete the arm dir instead")


def train_pair(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    extend_from: str | Path | None = None,
    only: list[str] | None = None,
) -> dict:
    """Train both arms, or with `only` the named ones (e.g. one arm per core: each arm's init and batches
    depend on the seed alone, so arms trained apart are as paired as arms trained in one process)."""
    out = Path(out)
    arms = arm_configs(cfg)
    check_arms(cfg, only, overwrite)
    check_out_dir(out, resume or only is not None, overwrite)  # another process may be training the other arm
    for c in arms.values():
        hf_config(c)  # impossible settings fail before tokenising, and before pair.json is written
    if extend_from is not None and not all((Path(extend_from) / name).is_dir() for name in arms):
        raise UserError(f"--extend-from {extend_from}: not a pair dir with arms {', '.join(arms)}")
    cache = Path(cfg.data.cache_dir or out / "data")
    prepare_data(
        cfg.data, cache, is_main=is_main_process(), wait_s=cfg.dist_timeout_s
    )  # once, before any process group
    dist = Dist(cfg.device, cfg.dist_timeout_s)  # under torchrun every process runs this; the main one writes
    shared = {k: v for k, v in cfg.to_dict().items() if k != "objective"}
    record = {
        "name": out.name,
        "seed": cfg.seed,
        "shared": shared,
        "arms": {n: c.objective.to_dict() for n, c in arms.items()},
    }
    if extend_from is not None:
        record["extended_from"] = str(extend_from)
    dist.barrier()  # every rank has checked before the main one writes
    if dist.is_main:
        if overwrite and not resume and out.exists():
            for p in out.iterdir():
                if p.name != "data":  # the token cache is reusable data
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "pair.json", record)
    dist.barrier()

    summaries = {
        name: train(
            c,
            out / name,
            resume=resume,
            cache_dir=cache,
            progress=progress,
            extend_from=Path(extend_from) / name if extend_from is not None else None,
        )  # fmt: skip
        for name, c in arms.items()
        if only is None or name in only
    }
    # arms trained apart: compare those that have started (the last to finish checks them all)
    record["paired"] = check_paired(out, [a for a in arms if (out / a / "provenance.json").is_file()])
    if dist.is_main:
        write_json(out / "pair.json", record)
    return {"arms": summaries, "paired": record["paired"]}


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (distinct ints >= 0)."""
    try:
        seeds = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds {text!r}: give distinct integers >= 0, e.g. --seeds 0,1,2")
    return seeds


def train_study(
    cfg: TrainConfig, out: str | Path, seeds: list[int], resume: bool = False, overwrite: bool = False,
    progress: bool = True, only: list[str] | None = None,
) -> dict:  # fmt: skip
    """One pair per seed, `<out>/seed-<s>/{ntp,nitp}`: within a seed everything is paired; across seeds the
    init and (unless `data_seed` holds it) the data order change. The token cache `<out>/data` is shared."""
    out = Path(out)
    check_arms(cfg, only, overwrite)  # before anything is deleted
    # with `only`, other processes may be training the other arms in the same study dir
    if check_out_dir(out, resume or only is not None, overwrite) and overwrite and not resume and is_main_process():
        for p in out.iterdir():  # the old study's seeds go; its token cache stays
            if p.name != "data":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    record = {"name": out.name, "seeds": seeds, "data_seed": cfg.data_seed, "shared": cfg.to_dict(), "pairs": {}}
    results = {}
    for seed in seeds:
        arm_cfg = dataclasses.replace(
            cfg, seed=seed, data=dataclasses.replace(cfg.data, cache_dir=cfg.data.cache_dir or str(out / "data"))
        )
        results[seed] = train_pair(
            arm_cfg, out / f"seed-{seed}", resume=resume, overwrite=overwrite, progress=progress, only=only
        )
        record["pairs"][f"seed-{seed}"] = results[seed]["paired"]
        if is_main_process():  # as each seed lands, so a killed study shows what is done
            write_json(out / "study.json", record)
    return {"seeds": results, "paired": record["pairs"]}


def check_paired(out: Path, arms: list[str]) -> dict:
    """Compare the arms' provenance: same initial backbone weights, token file, planned sample order and
    (once trained) the hash chain of the batches each arm actually consumed."""
    prov = {a: json.loads((out / a / "provenance.json").read_text()) for a in arms}
    first = prov[arms[0]]
    keys = ["init_weights_sha256", "data_sha256", "order_sha256", "seed"]
    if all("consumed_order_sha256" in p for p in prov.values()):  # written when an arm finishes
        keys.append("consumed_order_sha256")
    result = {key: all(p[key] == first[key] for p in prov.values()) for key in keys}
    # the settings too (arms trained in separate processes, `--arms`, take theirs from separate command lines):
    # config.yaml but for the objective and the settings a resume may change (none changes the training data)
    settings = [_settings(out / a / "config.yaml") for a in arms]
    if all(x is not None for x in settings):
        result["settings"] = all(x == settings[0] for x in settings)
    if not all(result.values()):
        raise UserError(
            f"{out}: arms are not paired ({result}); were they trained with different seeds, data, presets or settings?"
        )
    return result


def _settings(path: Path) -> dict | None:
    import yaml

    if not path.is_file():
        return None
    saved = with_defaults(yaml.safe_load(path.read_text()) or {})  # arms trained by two trainer versions
    return {k: v for k, v in saved.items() if k != "objective" and k not in RESUMABLE_CHANGES}
