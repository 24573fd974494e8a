"""Run lm-evaluation-harness on one checkpoint and turn its output into nitp's results records.

The harness does all the work (`lm_eval.simple_evaluate` with an `HFLM` around the loaded HF
model); this module only picks the numbers out:

    tasks[name]   = {metrics, primary, version, n_samples, num_fewshot, ...}   per requested task/group
    samples[name] = [{doc_id, <metric>: value, target, response, ...}, ...]    per evaluated doc

Metric names are lm-eval's "metric,filter" keys with ",none" dropped ("acc", "exact_match,strict-match");
the stderr of metric m is m + "_stderr".
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

RESPONSE_CHARS = 300  # generations are kept shortened in per-sample records (mmlu_pro CoT can be 2k tokens)


def run_harness(
    checkpoint: Path,
    task_manager,
    names: list[str],
    *,
    limit=None,
    batch_size="8",
    device: str | None = None,
    dtype: str = "float32",
    num_fewshot: int | None = None,
    gen_kwargs: str | None = None,
    bootstrap_iters: int = 100_000,
) -> dict:
    """lm-eval's results dict (with per-sample logs) for one HF checkpoint dir."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from nitp_eval.models import load_model

    model, tokenizer = load_model(checkpoint, device=device, dtype=dtype)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=_batch_size(batch_size))
    once = OncePerMessage()  # lm-eval repeats e.g. its truncation warning once per request: say it once
    loggers = [logging.getLogger(name) for name in ("lm_eval.models.huggingface", "lm_eval.models.utils")]
    for logger in loggers:
        logger.addFilter(once)
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(names),
            task_manager=task_manager,
            limit=limit,
            num_fewshot=num_fewshot,
            gen_kwargs=gen_kwargs,
            log_samples=True,
            bootstrap_iters=bootstrap_iters,
        )
    finally:
        for logger in loggers:
            logger.removeFilter(once)


class OncePerMessage(logging.Filter):
    """Lets a log message through the first time only; messages differing only in their numbers are one."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "N", str(record.msg))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def parse_gen_kwargs(text: str | None) -> dict:
    """lm_eval's `--gen_kwargs` string (k=v,k=v) as a dict of strings; UserError when malformed."""
    from nitp_train.errors import UserError

    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--gen-kwargs {text!r}: give key=value pairs separated by commas, e.g. max_gen_toks=256")
        out[key.strip()] = value.strip()
    if "max_gen_toks" in out and not out["max_gen_toks"].isdigit():
        raise UserError(f"--gen-kwargs max_gen_toks={out['max_gen_toks']}: must be a positive integer")
    return out


def model_positions(checkpoint: Path) -> int:
    """The context length lm-eval's HF model will use for this checkpoint, from its config and tokenizer only.

    Also refuses, before any weights load, a model that is not a causal LM (lm-eval scores next tokens).
    """
    from lm_eval.models.utils import resolve_max_length
    from transformers import AutoConfig, AutoTokenizer

    from nitp_eval.models import first_line, is_causal_lm
    from nitp_train.errors import UserError

    try:
        config = AutoConfig.from_pretrained(checkpoint)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"{checkpoint}: cannot read its config or tokenizer ({e.__class__.__name__}: {first_line(e)})"
        ) from e
    if not is_causal_lm(config):
        raise UserError(
            f"{checkpoint}: an encoder ({', '.join(config.architectures)}), not a causal LM; lm-eval needs next-token "
            "log-likelihoods: use nitp-eval mteb or nitp-eval geometry for this model"
        )
    return int(resolve_max_length(config, tokenizer))


def fit_generation(names: list[str], positions: int, user_gen: dict, strict: bool) -> tuple[dict, list[str]]:
    """(generation_kwargs per capped task, notes): every generation task's max_gen_toks fitted to `positions`.

    lm-eval keeps max_length - max_gen_toks positions for the prompt and stops with an error when
    that is <= 0. A task asking for more than half the positions is capped at half (a note says so),
    or refused with `strict`. A max_gen_toks given in --gen-kwargs is the user's: it overrides every
    task and is only refused when it cannot run at all.
    """
    from nitp_eval.lm.taskdir import generation_caps
    from nitp_train.errors import UserError

    if "max_gen_toks" in user_gen:
        asked = int(user_gen["max_gen_toks"])
        if asked >= positions:
            raise UserError(
                f"--gen-kwargs max_gen_toks={asked}: the model has {positions} positions and lm-eval keeps "
                f"{positions} - max_gen_toks for the prompt; give max_gen_toks={positions // 2} or less"
            )
        return {}, []
    cap = positions // 2
    caps = generation_caps(names, cap)
    if caps and strict:
        task, (asked, _) = next(iter(caps.items()))
        raise UserError(
            f"{task}: asks for max_gen_toks={asked} new tokens but the model has {positions} positions "
            f"({len(caps)} task(s) like this); drop --strict to cap them at {cap}, or pass --gen-kwargs max_gen_toks=N"
        )
    notes = []
    by_length: dict[int, list[str]] = {}
    for task, (asked, _) in caps.items():
        by_length.setdefault(asked, []).append(task)
    for asked, tasks in by_length.items():
        shown = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
        notes.append(
            f"{shown}: max_gen_toks {asked} capped at {cap}, half the model's {positions} positions (the prompt keeps "
            "the rest; lm-eval cuts longer prompts from the left); --strict refuses instead"
        )
    return {task: kwargs for task, (_, kwargs) in caps.items()}, notes


def _batch_size(b):
    return int(b) if str(b).isdigit() else b  # "auto" / "auto:4" stay strings, as on lm-eval's command line


def metric_name(key: str) -> str:
    """lm-eval result key -> ours: 'acc,none' -> 'acc'; 'exact_match_stderr,strict-match' -> 'exact_match,strict-match_stderr'."""
    metric, _, filt = key.partition(",")
    stderr = metric.endswith("_stderr")
    if stderr:
        metric = metric[: -len("_stderr")]
    name = metric if filt in ("", "none") else f"{metric},{filt}"
    return name + ("_stderr" if stderr else "")


def _metrics(result: dict) -> dict:
    out = {}
    for key, value in result.items():
        if "," not in key:  # alias, name, sample_len
            continue
        out[metric_name(key)] = None if value == "N/A" else value
    return out


def _leaves(name: str, group_subtasks: dict) -> list[str]:
    children = group_subtasks.get(name) or []
    if not children:
        return [name]
    return [leaf for c in children for leaf in _leaves(c, group_subtasks)]


def collect(results: dict, names: list[str], primary: dict[str, str] | None = None) -> tuple[dict, dict]:
    """(tasks, samples) records for the requested task/group names from lm-eval's results dict."""
    primary = primary or {}
    groups = results.get("group_subtasks", {})
    tasks, samples = {}, {}
    for name in names:
        leaves = _leaves(name, groups)
        metrics = _metrics(results["results"][name])
        is_group = leaves != [name]
        shots = {results["n-shot"].get(leaf) for leaf in leaves}
        cfg = results["configs"][leaves[0]]
        entry = {
            "metrics": metrics,
            "primary": primary.get(name) or next((k for k in metrics if not k.endswith("_stderr")), None),
            "version": results["versions"].get(name),
            "n_samples": sum(results["n-samples"][leaf]["effective"] for leaf in leaves),
            "num_fewshot": shots.pop() if len(shots) == 1 else {leaf: results["n-shot"].get(leaf) for leaf in leaves},
            "n_docs": sum(results["n-samples"][leaf]["original"] for leaf in leaves),
            "output_type": cfg.get("output_type"),
        }
        # lm-eval draws shots from fewshot_split, else the training split, else validation; 0-shot: none
        entry["fewshot_split"] = (
            None
            if entry["num_fewshot"] == 0
            else (cfg.get("fewshot_split") or cfg.get("training_split") or cfg.get("validation_split"))
        )
        if cfg.get("output_type") == "generate_until":
            entry["generation_kwargs"] = cfg.get("generation_kwargs")
        if is_group:
            entry["subtasks"] = {
                leaf: {
                    "metrics": _metrics(results["results"][leaf]),
                    "version": results["versions"].get(leaf),
                    "n_samples": results["n-samples"][leaf]["effective"],
                }
                for leaf in leaves
            }
        tasks[name] = entry
        samples[name] = [
            rec
            for leaf in leaves
            for rec in sample_records(results["samples"].get(leaf, []), prefix=f"{leaf}:" if is_group else None)
        ]
        entry["answers"] = answer_concentration(samples[name], entry["primary"])
    return tasks, samples


DEGENERATE_SHARE = 0.9  # a task is flagged when one answer is given to at least this share of its questions


def answer_concentration(records: list[dict], primary: str | None) -> dict | None:
    """How concentrated a model's answers are, beside the majority-answer baseline (None without records).

    Answers: the option of highest log-likelihood (multiple choice; the `acc` choice, unnormalised),
    else what the primary metric's filter extracted from the generation. `top_share` is the share of
    the most frequent answer, `majority_baseline` the score of always giving the most frequent gold
    answer; `degenerate` when top_share >= DEGENERATE_SHARE: the score then mostly measures how often
    that one answer is right, not the model's knowledge (a lettered task's letter bias, say).
    """
    from collections import Counter

    filt = (primary or "").partition(",")[2] or "none"
    answers, golds = [], []
    for r in records:
        if r.get("loglikelihoods"):
            lls = r["loglikelihoods"]
            answers.append(max(range(len(lls)), key=lls.__getitem__))
        elif "extracted" in r:
            answers.append(str(r["extracted"].get(filt, r.get("response"))))
        else:
            continue
        golds.append(str(r.get("target")))
    if not answers:
        return None
    top, top_n = Counter(answers).most_common(1)[0]
    gold, gold_n = Counter(golds).most_common(1)[0]
    share = top_n / len(answers)
    return {
        "n": len(answers),
        "top_answer": top,
        "top_share": share,
        "majority_answer": gold,
        "majority_baseline": gold_n / len(golds),
        "degenerate": share >= DEGENERATE_SHARE,
    }


def sample_records(logged: list[dict], prefix: str | None = None) -> list[dict]:
    """One record per doc from lm-eval's log_samples entries (one entry per doc and filter).

    Keys: doc_id ("<subtask>:<id>" inside a group), every metric value under our metric names,
    target, and either the option log-likelihoods (multiple choice) or the shortened raw
    response plus what each filter extracted from it (generation).
    """
    by_doc: dict = {}
    for s in logged:
        doc_id = f"{prefix}{s['doc_id']}" if prefix else s["doc_id"]
        rec = by_doc.setdefault(doc_id, {"doc_id": doc_id})
        if prefix:
            rec["subtask"] = prefix[:-1]
        for m in s["metrics"]:
            rec[metric_name(f"{m},{s['filter']}")] = s[m]
        rec["target"] = _short(s["target"])
        resps = s["resps"]
        if resps and isinstance(resps[0][0], str):  # generation
            rec["response"] = _short(resps[0][0])
            rec.setdefault("extracted", {})[s["filter"]] = _short(s["filtered_resps"][0])
        elif resps and isinstance(resps[0][0], (list, tuple)):  # multiple choice: (loglikelihood, is_greedy) per option
            rec["loglikelihoods"] = [float(r[0][0]) for r in resps]
    return list(by_doc.values())


def _short(x):
    return x[:RESPONSE_CHARS] + "..." if isinstance(x, str) and len(x) > RESPONSE_CHARS else x


LM_EVAL_BOOTSTRAP_ITERS = 100_000  # what the lm_eval command line always uses (it has no option for it)


def lm_eval_command(
    checkpoint,
    names,
    task_dir,
    *,
    limit=None,
    batch_size="8",
    dtype="float32",
    device=None,
    num_fewshot=None,
    gen_kwargs=None,
    bootstrap_iters=LM_EVAL_BOOTSTRAP_ITERS,
) -> str:
    """The `lm_eval` command line that gives the same scores (task_dir from `nitp-eval lm --export-tasks`).

    lm_eval's command line has no --bootstrap_iters: another value is noted in a trailing shell comment
    (it changes only the stderr: all of them for 0, bootstrapped ones otherwise).
    """
    args = [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={checkpoint},dtype={dtype}",
        "--tasks",
        ",".join(names),
        "--include_path",
        str(task_dir),
        "--batch_size",
        str(batch_size),
    ]
    if device:
        args += ["--device", device]
    if limit is not None:
        args += ["--limit", str(limit)]
    if num_fewshot is not None:
        args += ["--num_fewshot", str(num_fewshot)]
    if gen_kwargs:
        args += ["--gen_kwargs", gen_kwargs]
    cmd = shlex.join(args + ["--log_samples", "--output_path", "lm_eval_out"])
    if bootstrap_iters != LM_EVAL_BOOTSTRAP_ITERS:
        cmd += f"  # nitp ran bootstrap_iters={bootstrap_iters}; lm_eval always uses {LM_EVAL_BOOTSTRAP_ITERS}"
    return cmd


RUN_KEYS = ("limit", "batch_size", "device", "dtype", "num_fewshot", "gen_kwargs")  # what run_harness takes


def evaluate_targets(targets, dests, names: list[str], settings: dict, *, primary: dict, overwrite: bool):
    """Load -> compute -> write, per target: lm-eval's harness over a task dir written for this run.

    Yields (target, results path, per-task records) as each checkpoint lands; `settings` (the resolved
    options) is recorded in every results file with what the harness reports (max length, seeds).
    """
    import tempfile

    from lm_eval.tasks import TaskManager

    from nitp_eval.lm.taskdir import write_task_dir
    from nitp_eval.runs import results_header, write_json

    data_dir = Path(settings["data_dir"]) if settings["data_dir"] else None
    run_kw = {k: settings[k] for k in RUN_KEYS}
    bootstrap_iters = settings["bootstrap_iters"]
    with tempfile.TemporaryDirectory(prefix="nitp-lm-tasks-") as tmp:
        task_dir = write_task_dir(Path(tmp), names, data_dir, settings["task_num_fewshot"],
                                  generation=settings["generation_overrides"])  # fmt: skip
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        for target, dest in zip(targets, dests):
            results = _harness(target.checkpoint, manager, names, bootstrap_iters, run_kw, data_dir)
            task_records, samples = collect(results, names, primary)
            recorded = {
                **settings,
                "max_length": results.get("max_length"),
                "seeds": {k: results["config"].get(k) for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")},
                "lm_eval_command": lm_eval_command(target.checkpoint, names, "TASK_DIR", bootstrap_iters=bootstrap_iters, **run_kw),
            }  # fmt: skip
            payload = results_header("lm", target, recorded, ("lm_eval",)) | {"tasks": task_records, "samples": samples}
            path = write_json(dest, payload, overwrite)
            del results, samples, payload
            _free_memory()  # the model of this checkpoint, before loading the next one
            yield target, path, task_records


def _harness(checkpoint, manager, names, bootstrap_iters, run_kw, data_dir):
    from datasets.exceptions import DatasetNotFoundError

    from nitp_eval.lm.taskdir import DATA_DIR_ENV
    from nitp_train.errors import UserError

    try:
        return run_harness(checkpoint, manager, names, bootstrap_iters=bootstrap_iters, **run_kw)
    except (DatasetNotFoundError, ConnectionError) as e:
        if data_dir is not None:
            raise
        raise UserError(
            f"{','.join(names)}: a dataset could not be loaded from the Hugging Face hub ({e.__class__.__name__}); "
            f"offline, pass --data-dir (or {DATA_DIR_ENV}) with local copies"
        ) from e


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
