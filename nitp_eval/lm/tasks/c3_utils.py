"""Python hooks of the C3 task variants (lm-eval `process_docs`); see docs/lm-eval.md, section C3."""

# CLUE's c3 splits list the dialogue documents (C3-D) first, numbered from id 0, then the
# mixed-genre documents (C3-M), one row per question. Split size in questions ->
# (C3-D documents, C3-D questions), counted in shared/data/lm/c3 (the hub's train and
# validation rows are the same, in the same order).
C3_D = {3816: (1628, 1825), 11869: (4885, 5856)}  # validation, train


def dialogue_docs(dataset):
    """The dialogue (C3-D) questions of CLUE's c3 train or validation split."""
    n_docs, n_questions = C3_D.get(len(dataset), (None, None))
    ids = dataset["id"]
    # the part must be exactly a prefix: ids 0..n_docs-1 then the first mixed-genre document
    if n_docs is None or ids[n_questions - 1] != n_docs - 1 or ids[n_questions] != n_docs:
        raise ValueError(
            f"c3_dialogue: this C3 split ({len(dataset)} questions) is not CLUE's c3 train or validation "
            "in CLUE's order; cannot find its dialogue part"
        )
    return dataset.select(range(n_questions))


def require_answers(dataset):
    """The split unchanged, after checking that every question has its answer among the options."""
    missing = sum(doc["answer"] not in doc["choice"] for doc in dataset)
    if missing:
        raise ValueError(
            f"c3_test: {missing} of {len(dataset)} questions have no answer (the hub's CLUE c3 test hides "
            "them); use local data with answers: nitp-eval lm --data-dir DIR (DIR/c3/test.jsonl)"
        )
    return dataset
