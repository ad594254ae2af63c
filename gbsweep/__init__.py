"""gbsweep: hyperparameter sweeps of scikit-learn gradient boosting, Optuna trials as nested MLflow
runs. The command is `sweep` (gbsweep/cli.py); docs/code-layout.md maps the modules.

Nothing is imported here, so `sweep --help` and `sweep --version` answer at once.
"""

__version__ = "0.3.0"
