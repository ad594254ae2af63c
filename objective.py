"""What one trial computes, from a checkout: params -> estimator -> cross-validated score.

It lives in gbsweep/objective.py (read it there); this file is not installed, and names the
pieces a script of your own would call on a checkout, e.g. to score one param set as a trial would:

    from objective import build_model, evaluate, prepare_folds, scorer_for
"""

from gbsweep.objective import (
    TrialResult,
    build_estimator,
    build_model,
    evaluate,
    prepare_folds,
    scorer_for,
)

__all__ = ["TrialResult", "build_estimator", "build_model", "evaluate", "prepare_folds", "scorer_for"]
