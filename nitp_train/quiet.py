"""Third-party warnings that tell our users nothing, silenced at one place (docs/training.md, "Warnings").

Called once by both command lines (`nitp_train.errors.run_cli`); the library API leaves warnings alone.
Each filter matches one known message, so anything new still shows:
- scikit-learn's UndefinedMetricWarning ("Precision is ill-defined and being set to 0.0 ..."): mteb's
  classification metrics on a class a tiny model never predicts; the score is still right (0 there).
  A quick-start log held it about 150 times.
- mteb's "The task 'X' is superseded by 'X.v2'" notice (a warning and a log record): the paper's suite
  names the original tasks on purpose, to be comparable with the paper.
"""

from __future__ import annotations

import logging
import warnings

SKLEARN_UNDEFINED_METRIC = r".* is ill-defined and being set to 0\.0"
MTEB_SUPERSEDED = r"The task '.*' is superseded by"


class _DropSuperseded(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "is superseded by" not in record.getMessage()


def filter_known_warnings() -> None:
    warnings.filterwarnings("ignore", message=SKLEARN_UNDEFINED_METRIC)
    warnings.filterwarnings("ignore", message=MTEB_SUPERSEDED)
    logging.getLogger("mteb.abstasks.abstask").addFilter(_DropSuperseded())
