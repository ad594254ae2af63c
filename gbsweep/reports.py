"""What the MLflow UI does not give: plots of the study on its parent run, and the trials table.
Plain values in, no command line: sweep.py parses that (`sweep ui` is ui.py).

Only the standard library and the project's light modules are imported at the top.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gbsweep import studies
from gbsweep.errors import disk_full, first_line, say
from gbsweep.search_space import MEASURED

if TYPE_CHECKING:

    from mlflow import MlflowClient
    from optuna import Study
    from optuna.trial import FrozenTrial

PLOTS_DIR = "plots"  # on the parent run
TRIAL_SORTS = ("value", "number", "duration")
TRIAL_FORMATS = ("table", "csv", "json")


# ---------------------------------------------------------------- the trials table

def trial_rows(study: Study) -> list[dict]:
    return [studies.trial_row(trial) for trial in study.get_trials(deepcopy=False)]


def sort_rows(rows: list[dict], by: str, maximize: bool = True) -> list[dict]:
    """value: best first (trials without a value last); number: oldest first; duration: longest first."""
    if by == "value":
        sign = -1 if maximize else 1
        return sorted(rows, key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["number"]))
    if by == "duration":
        return sorted(rows, key=lambda r: (r["duration_s"] is None, -(r["duration_s"] or 0.0), r["number"]))
    return sorted(rows, key=lambda r: r["number"])


def format_rows(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    names = list(dict.fromkeys(name for row in rows for name in row["params"]))
    measured = [c for c in ("trees", *MEASURED, "feasible") if any(row.get(c) is not None for row in rows)]
    columns = ["number", "state", "value", *names, *measured, "duration_s", "run_id"]
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[_cell(row, c, "", repr) for c in columns] for row in rows])
        return out.getvalue().rstrip("\n")
    return _table(columns, [[_cell(row, c, "-", _short) for c in columns] for row in rows])


def _cell(row: dict, column: str, absent: str, number: Callable[[float], str]) -> str:
    """A param's value (None is Python's None), else the row's; `absent` for an inactive param or no value."""
    if column in row["params"]:
        value = row["params"][column]
        return "None" if value is None else number(value) if isinstance(value, float) else str(value)
    value = row.get(column)
    if value is None:
        return absent
    if isinstance(value, float):
        return f"{value:.2f}" if column == "duration_s" and number is _short else number(value)
    return str(value)


def _short(value: float) -> str:
    return f"{value:.6g}"


def _table(columns: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    right = {"number", "value", "duration_s"}

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if c in right else v.ljust(w)
                         for c, v, w in zip(columns, values, widths, strict=True)).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


# ---------------------------------------------------------------- plots on the parent run

def log_plots(client: MlflowClient, parent_run_id: str, study: Study) -> list[str]:
    """Log the study's plots as PNGs under plots/ on the parent run; return their artifact paths.

    A plot that cannot be drawn is named on stderr and skipped: it never fails the sweep.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed or wanted
    import matplotlib.pyplot as plt

    logged = []
    for name, draw in _plots(study):
        path = f"{PLOTS_DIR}/{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                figure = draw().figure
                client.log_figure(parent_run_id, figure, path,
                                  save_kwargs={"dpi": 110, "bbox_inches": "tight"})
            logged.append(path)
        except Exception as error:  # noqa: BLE001 (a plot is a nicety: say why, go on with the sweep)
            if disk_full(error) is not None:  # nor will the model be: the sweep stops with one line
                raise
            say(f"sweep: plot {name} not logged: {first_line(error, 200)}")
        finally:
            plt.close("all")
    return logged


def _plots(study: Study) -> list[tuple[str, Callable[[], Any]]]:
    """(name, draw) for each plot the study has data for; draw() returns matplotlib Axes."""
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
              if t.intermediate_values]
    n_params = len({name for t in completed for name in t.params})
    metric = _metric_name(study)
    # a two-objective study's plots show the metric; its Pareto front has a plot of its own
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    plots: list[tuple[str, Callable[[], Any]]] = []
    if completed:
        plots += [
            ("optimization_history",
             lambda: vis.plot_optimization_history(study, target=target, target_name=metric)),
            ("parallel_coordinate",
             lambda: _wide(vis.plot_parallel_coordinate(study, target=target, target_name=metric), n_params)),
        ]
    if completed and target is not None:
        names = studies.study_config(study).objectives()
        plots.append(("pareto_front", lambda: vis.plot_pareto_front(
            study, target_names=names, constraints_func=_constraints)))
    if len(completed) >= 2 and n_params >= 2:  # importances compare params over several trials
        # 16 trees, not Optuna's 64: the same ranking here in a third of the time (0.4 s, not
        # 1.4 s, at 200 trials), and the end of a sweep waits for it.
        evaluator = FanovaImportanceEvaluator(n_trees=16, seed=0)
        plots.append(("param_importances", lambda: vis.plot_param_importances(
            study, evaluator=evaluator, target=target, target_name=metric)))
    if pruned:
        title = f"Pruned trials: {metric} while their ensembles grew"
        plots.append(("intermediate_values_pruned",
                      lambda: _titled(vis.plot_intermediate_values(_view(study, pruned)), title)))
    return plots


def _metric_name(study: Study) -> str:
    """The metric the study maximizes, from the search space it remembers."""
    try:
        return studies.study_config(study).metric
    except Exception:  # noqa: BLE001 (a study not started by `sweep run`: Optuna's own label)
        return "Objective Value"


def _constraints(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values, for the Pareto plot to grey out the infeasible trials."""
    return list(trial.constraints.values())


def _view(study: Study, trials: list[FrozenTrial]) -> Study:
    """An in-memory study holding only these trials, for a plot of just them."""
    import optuna

    view = optuna.create_study(directions=study.directions)
    view.add_trials(trials)
    return view


def _wide(axes: Any, n_params: int) -> Any:
    axes.figure.set_size_inches(max(6.4, 1.4 * (n_params + 1)), 4.8)  # room for every axis's ticks
    return axes


def _titled(axes: Any, title: str) -> Any:
    axes.set_title(title)
    legend = axes.get_legend()
    if legend is not None and len(legend.get_texts()) > 12:
        legend.remove()  # one entry per trial: past a dozen it only hides the curves
    return axes
