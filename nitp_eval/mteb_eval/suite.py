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
    revision: str | None = None  # the dataset revision evaluated; None: the one mteb's TaskMetadata names
    hf_subsets: tuple[str, ...] | None = None  # None: the English subsets mteb's language filter keeps
    split: str = "test"


C, S, R = GROUPS
# The paper's 25 tasks, each pinned to its dataset revision: the one place the revisions live. They are
# the revisions mteb 2.26.24's TaskMetadata names (and mteb 2.12.0's, the paper's version: docs/mteb.md);
# a hub run loads exactly these whatever mteb is installed, a local copy stands for them, and results
# record them (tests/test_mteb_suite.py checks them against the installed mteb).
PAPER = (
    SuiteTask("AmazonCounterfactualClassification", C, "1f7e6a9d6fa6e64c53d146e428565640410c0df1", ("en",)),
    SuiteTask("AmazonReviewsClassification", C, "6b5d328eaae8ef408dd7d775040245cf86f92e9d"),
    SuiteTask("Banking77Classification", C, "0fd18e25b25c072e09e0d92ab615fda904d66300"),
    SuiteTask("EmotionClassification", C, "4f58c6b202a23cf9a4da393831edf4f9183cad37"),
    SuiteTask("MTOPDomainClassification", C, "a76d16fae880597b9c73047b50159220a441cb54"),
    SuiteTask("MTOPIntentClassification", C, "2992d820f31312593c49a4890430aadadb0f0039"),
    SuiteTask("MassiveIntentClassification", C, "4672e20407010da34463acc759c162ca9734bca6"),
    SuiteTask("MassiveScenarioClassification", C, "fad2c6e8459f9e1c45d9315f4953d921437d70f8"),
    SuiteTask("ToxicConversationsClassification", C, "edfaf9da55d3dd50d43143d90c1ac476895ae6de"),
    SuiteTask("TweetSentimentExtractionClassification", C, "d604517c81ca91fe16a244d1248fc021f9ecee7a"),
    SuiteTask("BIOSSES", S, "d3fb88f8f02e40887cd149695127462bbcf29b4a"),
    SuiteTask("SICK-R", S, "20a6d6f312dd54037fe07a32d58e5e168867909d"),
    SuiteTask("STS12", S, "a0d554a64d88156834ff5ae9920b964011b16384"),
    SuiteTask("STS13", S, "7e90230a92c190f1bf69ae9002b8cea547a64cca"),
    SuiteTask("STS14", S, "6031580fec1f6af667f0bd2da0a551cf4f0b2375"),
    SuiteTask("STS15", S, "ae752c7c21bf194d8b67fd573edf7ae58183cbe3"),
    SuiteTask("STS16", S, "4d8694f8f0e0100860b497b999b3dbed754a0513"),
    SuiteTask("STS17", S, "faeb762787bd10488a50c8b5be4a3b82e411949c", ("en-en",)),
    SuiteTask("STSBenchmark", S, "b0fddb56ed78048fa8b90373c8a3cfc37b684831"),
    SuiteTask("AskUbuntuDupQuestions", R, "c5691e3c48741d5f83b5cc8e630653d7a8cfc048"),
    SuiteTask("SciDocsRR", R, "39b8377811871075eed9de3b8a7e21aaa6acb3d8"),
    SuiteTask("SprintDuplicateQuestions", R, "d66bd1f72af766a5cc4b0ca5e00c162f89e8cc46"),
    SuiteTask("StackOverflowDupQuestions", R, "5debda000fe8e27ebb5c123d38081f92e1847a59"),
    SuiteTask("TwitterSemEval2015", R, "70970daeab8776df92f5ea462b6173c0b46fd2d1"),
    SuiteTask("TwitterURLCorpus", R, "8b6510b0b1fa4e4c4f879467980e9be563ec1cdf"),
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
    """The mteb task object, restricted to the suite's split and English subsets, set to the pinned revision."""
    from nitp_eval.mteb_eval import import_mteb

    task = import_mteb().get_task(
        st.name, languages=["eng"], eval_splits=[st.split], hf_subsets=st.hf_subsets, exclusive_language_filter=True
    )
    if st.revision is not None and task.metadata.revision != st.revision:
        # Another mteb version names another revision: the pin wins. The metadata object is shared by every
        # instance of the task class, so this task gets a copy rather than an edit.
        dataset = {**task.metadata.dataset, "revision": st.revision}
        task.metadata = task.metadata.model_copy(update={"dataset": dataset})
    return task


def mteb_revision(task) -> str:
    """The dataset revision the installed mteb names for `task` (its class's metadata, whatever load_task pinned)."""
    return type(task).metadata.revision
