"""The run-directory contract (docs/training.md, "Run directory"), seen from the analysis side.

Every nitp-eval command takes a path that is one of:
  * a study dir     runs/s/            (study.json, seed-<s>/ pair dirs: `nitp-train pair --seeds`)
  * a pair dir      runs/x/            (pair.json and/or arm dirs ntp/, nitp/, ...)
  * an arm dir      runs/x/nitp/       (checkpoints/step-NNNNNN/)
  * a checkpoint    runs/x/nitp/checkpoints/step-000200/
  * any HF model dir (not from the trainer)
and resolves it to `Target`s; results go to runs/x/eval/<what>/<arm>-step-NNNNNN.json.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from nitp_train.errors import UserError
from nitp_train.version import git_commit

# Schema versions per results kind (a kind not listed is at 1). Readers accept every version up to theirs.
# geometry 2 (issue 20) adds, keeping every version-1 key as it was: per_layer rankme, alpha_req, twonn,
# prompt_entropy, dataset_entropy, curvature; top-level unembedding and samples; settings.metrics.
SCHEMA_VERSIONS = {"geometry": 2}
SCHEMA_VERSION = max(1, *SCHEMA_VERSIONS.values())  # the newest version any results file of this nitp has
STEP_DIR = re.compile(r"^step-(\d+)$")
SEED_DIR = re.compile(r"^seed-(\d+)$")
ARM_ORDER = ("ntp", "nitp")  # arms listed first in tables; other arms (ablations) follow by name


@dataclass(frozen=True)
class Target:
    """One model to evaluate: a checkpoint dir and, when it comes from a run, its place in it."""

    checkpoint: Path
    arm: str | None = None  # "ntp", "nitp", ... or None for a model from elsewhere
    step: int | None = None
    pair_dir: Path | None = None  # runs/x, where eval/ results go

    @property
    def from_trainer(self) -> bool:
        """A checkpoint of one of our run dirs (runs/x/<arm>/checkpoints/step-N), whose config and caches exist."""
        return self.arm is not None and self.checkpoint.parent.name == "checkpoints"

    @property
    def label(self) -> str:
        """File stem of this target's results: <arm>-step-NNNNNN, or the model dir's name."""
        if self.arm is not None and self.step is not None:
            return f"{self.arm}-step-{self.step:06d}"
        return self.checkpoint.name or "model"

    def results_path(self, what: str, out: Path | None = None) -> Path:
        base = (
            out
            if out is not None
            else (self.pair_dir / "eval" / what if self.pair_dir is not None else Path("eval") / what)
        )
        return Path(base) / f"{self.label}.json"


def checkpoint_dirs(arm_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every complete checkpoint of an arm, by step."""
    ckpts = Path(arm_dir) / "checkpoints"
    found = []
    if ckpts.is_dir():
        for d in ckpts.iterdir():
            m = STEP_DIR.match(d.name)
            if m and (d / "config.json").exists():
                found.append((int(m.group(1)), d))
    return sorted(found)


def arm_dirs(pair_dir: Path) -> list[Path]:
    """Arm dirs of a pair dir: ntp and nitp first, then any other arm (ablation) by name."""
    arms = [d for d in Path(pair_dir).iterdir() if d.is_dir() and (d / "checkpoints").is_dir()]
    return sorted(arms, key=lambda d: (ARM_ORDER.index(d.name) if d.name in ARM_ORDER else len(ARM_ORDER), d.name))


def study_seeds(path: str | Path) -> list[tuple[int, Path]]:
    """(seed, pair dir) of a study dir (`nitp-train pair --seeds`: study.json, seed-<s>/), by seed; [] otherwise."""
    p = Path(path)
    if not p.is_dir():
        return []
    seeds = sorted((int(m.group(1)), d) for d in p.iterdir() if d.is_dir() and (m := SEED_DIR.match(d.name)))
    # seed-<s> dirs make a study when study.json says so or each is a pair dir (copied results lack study.json)
    if seeds and ((p / "study.json").is_file() or all((d / "pair.json").is_file() for _, d in seeds)):
        return seeds
    return []


def resolve_targets(path: str | Path, all_steps: bool = False) -> list[Target]:
    """Checkpoints named by `path` (see module docstring): the latest per arm, or all with `all_steps`."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"{p}: no such file or directory (give a run dir, an arm dir, a checkpoint dir or an HF model dir)"
        )
    p = p.resolve()  # results record where the model really is, whatever the working dir
    m = STEP_DIR.match(p.name)
    if m and p.parent.name == "checkpoints":
        arm_dir = p.parent.parent
        return [Target(p, arm_dir.name, int(m.group(1)), arm_dir.parent)]
    if (p / "checkpoints").is_dir():
        return _arm_targets(p, p.parent, all_steps)
    seeds = study_seeds(p)
    if seeds:  # every arm of every seed; each seed's results go to its own pair dir
        return [t for _, d in seeds for t in resolve_targets(d, all_steps)]
    arms = arm_dirs(p) if p.is_dir() else []
    if arms:
        return [t for a in arms for t in _arm_targets(a, p, all_steps)]
    if (p / "config.json").exists():
        return [Target(p)]
    raise UserError(
        f"{p}: not a run dir, arm dir, checkpoint or HF model dir (no checkpoints/ and no config.json found)"
    )


def _arm_targets(arm_dir: Path, pair_dir: Path, all_steps: bool) -> list[Target]:
    found = checkpoint_dirs(arm_dir)
    if not found:
        raise UserError(f"{arm_dir}: no checkpoints yet (expected {arm_dir}/checkpoints/step-NNNNNN/config.json)")
    chosen = found if all_steps else found[-1:]
    return [Target(d, arm_dir.name, step, pair_dir) for step, d in chosen]


STEP_AT_END = re.compile(r"(\d+)$")  # step-001000, checkpoint-500, global_step300, step1000 (hub revisions)


def _step_of(name: str, what: str) -> int:
    m = STEP_AT_END.search(name)
    if not m:
        raise UserError(
            f"{what}: no step number at the end of its name (e.g. step-1000, checkpoint-500, step143000); "
            "a series needs one per checkpoint"
        )
    return int(m.group(1))


def series_targets(paths: list[str | Path], series: str | Path) -> list[Target]:
    """Checkpoint dirs (paths or quoted glob patterns) as the steps of one run, `series`.

    The step of each dir is the number its name ends with. Results go to <series>/eval/<what>/
    <name>-step-NNNNNN.json, <name> = the last part of `series`; `nitp-eval report <series>` then
    draws the series' dynamics like a trainer run's.
    """
    import glob

    series = Path(series)
    by_step: dict[int, Target] = {}
    for p in paths:
        matches = sorted(glob.glob(str(p))) if glob.has_magic(str(p)) else [str(p)]
        if not matches:
            raise UserError(f"{p}: matches no file or directory; give checkpoint dirs or a glob such as 'ckpts/step-*'")
        for m in matches:
            d = Path(m).resolve()
            if not (d / "config.json").is_file():
                raise UserError(f"{d}: not an HF model dir (no config.json); --series takes checkpoint dirs")
            step = _step_of(d.name, str(d))
            if step in by_step and by_step[step].checkpoint != d:
                raise UserError(f"{by_step[step].checkpoint} and {d} both name step {step}; give one dir per step")
            by_step[step] = Target(d, series.name, step, series)
    return [by_step[s] for s in sorted(by_step)]


def revision_targets(repo_id: str, revisions: list[str], series: str | Path | None = None) -> list[Target]:
    """Revisions (branches or tags such as step1000) of one hub model as a series, through huggingface_hub.

    Each revision resolves with `snapshot_download`: from the hub when it is reachable, else from the
    local HF cache (HF_HUB_OFFLINE=1, or no network) laid out by huggingface_hub (refs/<revision> ->
    snapshots/<commit>/). The series defaults to the model's name (EleutherAI/pythia-160m -> pythia-160m).
    """
    from huggingface_hub import snapshot_download

    from nitp_eval.models import first_line

    series = Path(series) if series is not None else Path(repo_id.rstrip("/").split("/")[-1])
    targets = []
    for rev in revisions:
        step = _step_of(rev, f"--revisions {rev}")
        try:
            path = snapshot_download(repo_id, revision=rev)
        except Exception as e:  # offline without a cached copy, unknown repo or revision, gated
            raise UserError(
                f"{repo_id}@{rev}: cannot get it ({e.__class__.__name__}: {first_line(e)}); with no hub access, "
                "download it on a machine that has one into the HF cache (huggingface-cli download "
                f"{repo_id} --revision {rev}) and copy the cache over"
            ) from e
        targets.append(Target(Path(path), series.name, step, series))
    return sorted(targets, key=lambda t: t.step)


def resolve_series(paths: list, series=None, revisions: str | None = None, all_steps: bool = False) -> list[Target]:
    """The targets of an eval command's paths: hub revisions, a series of checkpoint dirs, or run/model dirs."""
    if revisions is not None:
        if len(paths) != 1:
            raise UserError("--revisions: give exactly one hub model id as PATH, e.g. EleutherAI/pythia-160m")
        names = [r.strip() for r in revisions.split(",") if r.strip()]
        if not names:
            raise UserError("--revisions: give comma-separated revisions, e.g. step1000,step8000")
        return revision_targets(str(paths[0]), names, series)
    if series is not None:
        if all_steps:
            raise UserError("--all-steps applies to run dirs; with --series every dir given is one step already")
        return series_targets(paths, series)
    # the same checkpoint named twice (e.g. as a run dir and as a path) is evaluated once
    return list(dict.fromkeys(t for p in paths for t in resolve_targets(p, all_steps)))


# ---------------------------------------------------------------------------- run defaults (geometry)


def run_config(target: Target) -> dict:
    """The arm's config.yaml when the target comes from a run, else {}."""
    import yaml

    if not target.from_trainer:
        return {}
    cfg_path = target.checkpoint.parent.parent / "config.yaml"
    if not cfg_path.exists():
        return {}
    try:
        return yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{cfg_path}: not valid YAML ({e.__class__.__name__}); fix or remove it") from e


def run_validation_tokens(target: Target, tokens: int):
    """(ids, spec, source) from the run's token cache (provenance.json data_dir/val.bin), or None."""
    import json

    import numpy as np

    if not target.from_trainer:
        return None
    prov_path = target.checkpoint.parent.parent / "provenance.json"
    try:
        data_dir = Path(json.loads(prov_path.read_text())["data_dir"])
        if not data_dir.is_absolute() and not data_dir.exists() and target.pair_dir is not None:
            data_dir = target.pair_dir / "data" / data_dir.name
        meta = json.loads((data_dir / "meta.json").read_text())
    except (OSError, KeyError, ValueError):
        return None
    if not meta.get("val_tokens") or not (data_dir / "val.bin").exists():
        return None
    try:
        val = np.memmap(data_dir / "val.bin", dtype=np.dtype(meta["dtype"]), mode="r")
    except (ValueError, TypeError) as e:  # a size that is no whole number of tokens: cut short
        raise UserError(
            f"{data_dir / 'val.bin'}: unreadable as {meta['dtype']} tokens ({e.__class__.__name__}); the token cache "
            "is cut short or corrupt: delete its dir and re-run `nitp-train pair` to re-tokenise, or pass --text"
        ) from e
    # a memmap slice: windows are views of it, read from disk batch by batch
    return val[:tokens], str(data_dir / "val.bin"), f"run validation tokens ({meta.get('validation')})"


def run_text(text: str | None, run_cfg: dict) -> tuple[str, str]:
    """(spec, where it came from): --text, the run's data.validation text, or the built-in validation split."""
    if text:
        return text, "--text"
    data = run_cfg.get("data") or {}
    val = data.get("validation")
    if val:
        from nitp_train.data import resolve_files

        if resolve_files(val) is not None:  # local text that still exists; HF ids are not retried offline
            return val, "run data.validation"
    from nitp_train.data import BUILTIN_VAL  # the trainer's built-in validation split

    return str(BUILTIN_VAL), "built-in validation corpus (run validation text not given or not found)"


def target_layer(target: Target, run_cfg: dict, option: int | None, last: int):
    """(k, source, projector or None). An explicit --target-layer wins; then the projector, config, default."""
    from nitp_eval.models import load_projector
    from nitp_train.objective import resolve_target_layer

    projector = load_projector(target.checkpoint, last)
    if option is not None:
        if not 0 <= option <= last:
            raise UserError(f"--target-layer {option}: out of range; this model has hidden_states 0..{last}")
        return option, "--target-layer", projector
    if projector is not None:
        return projector.target_layer, "nitp_projector.safetensors", projector
    tl = (run_cfg.get("objective") or {}).get("target_layer")
    if tl is not None:
        try:
            return resolve_target_layer(tl, last), "run objective.target_layer", None
        except ValueError:
            pass
    from nitp_train.objective import ObjectiveConfig

    return resolve_target_layer(ObjectiveConfig().target_layer, last), "default ceil(0.2 L), the trainer's rule", None


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the given distributions (plus nitp and the libraries every result depends on)."""
    out = {}
    for name in ("nitp", "torch", "transformers", "tokenizers", "numpy", *names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def results_header(kind: str, target: Target | None, settings: dict, libraries: tuple[str, ...] = ()) -> dict:
    """The common head of every results file: schema, what was evaluated, exact settings, versions."""
    return {
        "schema": f"nitp.{kind}",
        "schema_version": SCHEMA_VERSIONS.get(kind, 1),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(target.checkpoint) if target else None,
        "arm": target.arm if target else None,
        "step": target.step if target else None,
        "settings": settings,
        "versions": library_versions(*libraries),
        "git": git_commit(),
    }


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing results file unless asked to."""
    if Path(path).exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it or --out to write elsewhere")


SKIP_EXISTING_HELP = (
    "Evaluate only the checkpoints that have no results file yet (continue an interrupted evaluation); the "
    "existing files are kept as they are. Default: off (an existing file stops the command)."
)


def pending_targets(targets: list[Target], what: str, out: Path | None, skip_existing: bool, overwrite: bool):
    """With --skip-existing, the targets whose results file does not exist yet (saying how many are skipped)."""
    if not skip_existing:
        return targets
    if overwrite:
        raise UserError("--skip-existing keeps existing results and --overwrite replaces them: give one of them")
    todo = [t for t in targets if not t.results_path(what, out).exists()]
    if len(todo) < len(targets):
        import typer

        typer.echo(
            f"--skip-existing: {len(targets) - len(todo)} of {len(targets)} checkpoint(s) already have {what} results"
        )
    return todo


def check_destinations(targets: list[Target], what: str, out: Path | None, overwrite: bool) -> list[Path]:
    """Results path of every target, checked before any work: none exists (unless `overwrite`), no two collide."""
    paths: dict[Path, Target] = {}
    for t in targets:
        dest = t.results_path(what, out).resolve()
        if dest in paths:
            raise UserError(
                f"{paths[dest].checkpoint} and {t.checkpoint} would both write {dest}; "
                "evaluate them in separate calls or with different --out dirs"
            )
        check_writable(dest, overwrite)
        paths[dest] = t
    return list(paths)


def read_jsonl(path: Path, raw: bytes | None = None) -> list:
    """Every record of a jsonl file; UserError naming the file and line of the first one that does not parse.

    Splits on "\n" only: str.splitlines would also split on U+2028 inside JSON strings.
    """
    raw = Path(path).read_bytes() if raw is None else raw
    rows = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise UserError(
                f"{path}:{number}: not valid JSON ({e.__class__.__name__}); the file is cut short or corrupt: "
                "copy it again"
            ) from None
    return rows


def write_results(kind: str, target: Target, dest: Path, settings: dict, body: dict, overwrite: bool) -> dict:
    """Header + body written to `dest` (atomically); returns the payload, with `_path` for the console."""
    payload = {**results_header(kind, target, settings), **body}
    write_json(dest, payload, overwrite)
    return {**payload, "_path": str(dest)}


def write_json(path: Path, payload: dict, overwrite: bool = False) -> Path:
    """Write results atomically (temp file + rename); never silently replaces an existing file."""
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(_finite_or_null(payload), indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path


def _finite_or_null(x):
    """NaN and inf become null: bare NaN is not JSON, and strict parsers reject it."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_null(v) for v in x]
    return x


def _jsonable(x):
    import numpy as np

    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return _finite_or_null(float(x))
    if isinstance(x, np.ndarray):
        return _finite_or_null(x.tolist())
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
