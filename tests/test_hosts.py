"""Workers on hosts of their own: network namespaces on a private bridge (tests/hosts.py), each with
its own address and hostname, reaching PostgreSQL and an `mlflow server` over the bridge.

What crosses a network: every child run says which host ran it; a host cut off mid-trial (its
link down while it fits) has its trial failed by the missing heartbeats and retried on another
host, and when it comes back it neither writes a second run for that trial nor counts it twice;
a host cut off from the tracking server alone keeps running trials whose runs are recorded once
the server is reachable again. Each test checks 0 lost / 0 duplicated / 1 parent / 1 version.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import optuna
import pytest
from mlflow import MlflowClient

import hosts
from conftest import MlflowServer, postgres_database, small_space
from gbsweep import keys
from gbsweep.runner import LINK_WAIT_MAX_S
from test_many_workers import FAST_HEARTBEATS, SPACE, check_study_and_runs, launch, load

pytestmark = pytest.mark.skipif(hosts.why_no_hosts() is not None,
                                reason=f"no test hosts here: {hosts.why_no_hosts()}")


@pytest.fixture(scope="module")
def network():
    with hosts.network(2) as made:
        yield made


@pytest.fixture(scope="module")
def database_host(network: hosts.Network) -> str:
    """PostgreSQL reachable on the bridge (for the bridge's subnet only), for this module."""
    subnet = network.db_host.rsplit(".", 1)[0] + ".0/24"
    with hosts.postgres_on(network.db_host, subnet):
        yield network.db_host


@pytest.fixture(scope="module")
def tracking(network: hosts.Network, database_host: str, tmp_path_factory: pytest.TempPathFactory):
    """An `mlflow server` on the bridge's tracking address (its store on PostgreSQL)."""
    with postgres_database() as database:
        server = MlflowServer(tmp_path_factory.mktemp("hosts-mlflow"), database, host=network.tracking_host)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def storage(database_host: str, pg_database: str) -> str:
    return f"postgresql://postgres@{database_host}:5432/{pg_database}"


def wait_until(condition: Callable[[], object], what: str, processes: list[subprocess.Popen], storage: str,
               timeout: float = 240) -> object:
    """Poll the stores until `condition` holds; a process that died meanwhile fails the test at once.
    On a timeout the message shows the study's trials and the processes' states."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None and process.returncode != 0:
                pytest.fail(f"a process exited {process.returncode} while waiting for {what}:"
                            f" {process.communicate()[1]}")
        try:
            found = condition()
        except KeyError:  # no study yet
            found = None
        if found:
            return found
        time.sleep(0.2)
    states = [p.poll() for p in processes]
    pytest.fail(f"timed out after {timeout} s waiting for {what}; exit codes {states} (None: running);"
                f" the trials: {trials_now(storage)}")


def trials_now(storage: str) -> str:
    """Each trial's number, state and host, for a failure's message."""
    try:
        trials = load(storage).get_trials(deepcopy=False)
    except Exception as error:  # the message must not hide the timeout behind another error
        return f"unreadable ({error})"
    return ", ".join(f"{t.number} {t.state.name} on {t.user_attrs.get(keys.WORKER, 'nobody:').split(':')[0]}"
                     for t in trials)


def fitting_on(storage: str, host: hosts.Host) -> optuna.trial.FrozenTrial | None:
    """A trial of `host`'s worker that is fitting (its params drawn)."""
    running = load(storage).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return next((t for t in running if t.user_attrs.get(keys.WORKER, "").startswith(f"{host.name}:")
                 and len(t.params) == 2), None)


def run_hosts(tracking: str, experiment: str) -> dict[int, str]:
    """trial number -> the host its child run says it ran on."""
    client = MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], "tags.`mlflow.parentRunId` != ''", max_results=1000)
    return {int(r.data.tags[keys.TRIAL_NUMBER]): r.data.tags.get(keys.WORKER, "").split(":")[0] for r in runs}


def test_three_hosts_one_study(tmp_path, network, storage, tracking):
    # Trials of seconds: the workers' hosts start their Python while `sweep run` has trials left
    # (with 60 trees it once ran all 12 before a worker joined).
    small_space(tmp_path, study="space", text=SPACE.format(experiment="three-hosts", n_trials=9, trees=250))
    processes = [launch(tmp_path, "run", storage, tracking)]
    processes += [launch(tmp_path, "worker", storage, tracking, prefix=host.prefix()) for host in network.hosts]
    for host in network.hosts:
        wait_until(lambda host=host: any(t.user_attrs.get(keys.WORKER, "").startswith(f"{host.name}:")
                                         for t in load(storage).get_trials(deepcopy=False)),
                   f"a trial on {host.name}", processes, storage)
    outputs = [p.communicate(timeout=400) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in outputs]
    final = check_study_and_runs(storage, tracking, "three-hosts", 9)
    ran_on = run_hosts(tracking, "three-hosts")
    # A trial refused the last slot (two workers asked at the same instant) has no child run.
    assert ran_on == {t.number: t.user_attrs[keys.WORKER].split(":")[0] for t in final
                      if keys.SURPLUS not in t.user_attrs}
    assert set(ran_on.values()) == {socket.gethostname(), "host-1", "host-2"}


def test_a_host_cut_off_mid_trial(tmp_path, network, storage, tracking):
    """Its trial is failed by the missing heartbeats and retried on another host; back on the
    network, the cut-off worker adds no second run and no second count for it."""
    cut, other = network.hosts
    small_space(tmp_path, study="space", text=SPACE.format(experiment="cut-off", n_trials=8, trees=250))
    processes = [launch(tmp_path, "run", storage, tracking),
                 launch(tmp_path, "worker", storage, tracking, prefix=cut.prefix()),
                 launch(tmp_path, "worker", storage, tracking, prefix=other.prefix())]
    victim = wait_until(lambda: fitting_on(storage, cut), f"a trial fitting on {cut.name}", processes, storage)
    cut.cut()
    cut_at = time.monotonic()
    try:
        retry = wait_until(lambda: next((t for t in load(storage).get_trials(deepcopy=False)
                                         if t.system_attrs.get("failed_trial") == victim.number), None),
                           f"trial {victim.number} retried", processes[:1] + processes[2:], storage)
        retried_after = time.monotonic() - cut_at
    finally:
        cut.reconnect()
    outputs = [p.communicate(timeout=400) for p in processes]
    print(f"trial {victim.number} cut off on {cut.name}: retried as trial {retry.number} after"
          f" {retried_after:.1f} s (heartbeat {FAST_HEARTBEATS['SWEEP_HEARTBEAT_S']} s,"
          f" grace {FAST_HEARTBEATS['SWEEP_GRACE_S']} s); exit codes {[p.returncode for p in processes]}")
    print(f"the cut-off worker said: {outputs[1][1]!r}")
    assert [p.returncode for p in processes] == [0, 0, 0], [err for _, err in outputs]
    # It goes on: one line if it learnt its trial was taken (it may have finished fitting after
    # the link was back, its result then told too late), nothing else.
    taken = (f"trial {victim.number}: failed by the study's other workers while this process could not"
             f" reach the storage for {FAST_HEARTBEATS['SWEEP_GRACE_S']} s (its heartbeats stopped); its"
             " params are retried there, and this process goes on.")
    assert set(outputs[1][1].splitlines()) <= {taken}, outputs[1][1]
    final = check_study_and_runs(storage, tracking, "cut-off", 8)
    assert final[victim.number].state.name == "FAIL"
    client = MlflowClient(tracking)
    experiment_id = client.get_experiment_by_name("cut-off").experiment_id
    victim_runs = client.search_runs([experiment_id], f"tags.`{keys.TRIAL_NUMBER}` = '{victim.number}'")
    assert [r.info.status for r in victim_runs] == ["FAILED"]  # as the study says
    assert final[retry.number].params == victim.params
    assert run_hosts(tracking, "cut-off")[retry.number] != cut.name


def test_a_host_cut_off_from_the_tracking_server_only(tmp_path, network, storage, tracking):
    """The study stays reachable, so the host's trials go on and count; their child runs are
    written once the server is reachable again, by its recorder or by the repair at the end of
    `sweep run`, one run per trial either way."""
    cut = network.hosts[0]
    small_space(tmp_path, study="space", text=SPACE.format(experiment="tracking-cut", n_trials=10, trees=150))
    processes = [launch(tmp_path, "run", storage, tracking),
                 launch(tmp_path, "worker", storage, tracking, prefix=cut.prefix())]
    wait_until(lambda: fitting_on(storage, cut), f"a trial fitting on {cut.name}", processes, storage)
    cut.cut_from(network.tracking_host)
    try:
        wait_until(lambda: sum(t.state.name == "COMPLETE" and t.user_attrs[keys.WORKER].startswith(f"{cut.name}:")
                               for t in load(storage).get_trials(deepcopy=False)) >= 2,
                   f"two trials completed on {cut.name} while it cannot reach the tracking server",
                   processes, storage)
    finally:
        cut.reconnect_to(network.tracking_host)
    outputs = [p.communicate(timeout=400) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    final = check_study_and_runs(storage, tracking, "tracking-cut", 10)
    assert "host-1" in set(run_hosts(tracking, "tracking-cut").values())
    # A trial waits for its run until the recorder's first try to create it fails, not through
    # the retries (LINK_WAIT_MAX_S, 30 s): the wait is a trial's time past its fitting.
    waited = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs[keys.FIT_TIME_S]
              for t in final if t.user_attrs[keys.WORKER].startswith(f"{cut.name}:")]
    assert max(waited) < LINK_WAIT_MAX_S / 2, waited
    client = MlflowClient(tracking)
    for trial in final:  # each run says what the study says
        run = client.get_run(trial.user_attrs[keys.RUN_ID]) if keys.RUN_ID in trial.user_attrs else None
        if run is not None:
            assert run.data.tags[keys.TRIAL_STATE] == trial.state.name
