"""Task suites as data: the paper's 25 English MTEB tasks (Table 6), grouped as the paper groups them.

Task selection follows mteb's MTEB(eng, v1) benchmark: split `test`, English subsets only
(AmazonCounterfactualClassification `en`, STS17 `en-en`, the multilingual classification tasks `en`).
"""

from __future__ import annotations

from dataclasses import dataclass

from nitp_train.errors import UserError

GROUPS = ("Classification", "STS", "Retrieval/Dup")


@dataclass(frozen=True)
class SuiteTask:
    name: str  # mteb task name
    group: str  # one of GROUPS (or the mteb task type for tasks outside the paper's suite)
    hf_subsets: tuple[str, ...] | None = None  # None: the English subsets mteb's language filter keeps
    split: str = "test"


def _tasks(group: str, names: str, **subsets: tuple[str, ...]) -> tuple[SuiteTask, ...]:
    return tuple(SuiteTask(n, group, subsets.get(n)) for n in names.split())


PAPER = (
    _tasks(
        "Classification",
        """
        AmazonCounterfactualClassification AmazonReviewsClassification Banking77Classification
        EmotionClassification MTOPDomainClassification MTOPIntentClassification
        MassiveIntentClassification MassiveScenarioClassification ToxicConversationsClassification
        TweetSentimentExtractionClassification""",
        AmazonCounterfactualClassification=("en",),
    )
    + _tasks("STS", "BIOSSES SICK-R STS12 STS13 STS14 STS15 STS16 STS17 STSBenchmark", STS17=("en-en",))
    + _tasks(
        "Retrieval/Dup",
        """
        AskUbuntuDupQuestions SciDocsRR SprintDuplicateQuestions StackOverflowDupQuestions
        TwitterSemEval2015 TwitterURLCorpus""",
    )
)
SUITES = {"paper": PAPER}

# Group of a task outside the paper's suite, from its mteb type.
TYPE_GROUPS = {
    "Classification": "Classification",
    "STS": "STS",
    "PairClassification": "Retrieval/Dup",
    "Reranking": "Retrieval/Dup",
}


def resolve_suite(spec: str) -> tuple[SuiteTask, ...]:
    """A suite name ("paper") or a comma-separated list of mteb task names."""
    if spec in SUITES:
        return SUITES[spec]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UserError(
            f"--tasks {spec!r}: empty; give a suite ({', '.join(SUITES)}) or comma-separated mteb task names"
        )
    known = {t.name: t for t in PAPER}
    out = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        if name in known:
            out.append(known[name])
            continue
        from nitp_eval.mteb_eval import import_mteb

        try:
            task_type = import_mteb().get_task(name).metadata.type
        except KeyError as e:
            raise UserError(
                f"--tasks: {e.args[0]}; give mteb task names (e.g. STSBenchmark,SICK-R) or a suite "
                f"({', '.join(SUITES)})"
            ) from None
        out.append(SuiteTask(name, TYPE_GROUPS.get(task_type, task_type)))
    return tuple(out)


def load_task(st: SuiteTask):
    """The mteb task object, restricted to the suite's split and English subsets."""
    from nitp_eval.mteb_eval import import_mteb

    return import_mteb().get_task(
        st.name, languages=["eng"], eval_splits=[st.split], hf_subsets=st.hf_subsets, exclusive_language_filter=True
    )
