"""make bench, the slow link: the cost per trial against an `mlflow server` 50 ms away, and 0 ms away.

A host's link 50 ms long is what `tc qdisc add dev eth0 root netem delay 50ms` makes; this
machine's kernel has no netem, so a relay in this process stands in for the link: it forwards
TCP between `sweep run` and a local `mlflow server`, holding every chunk the sweep sends for 50 ms
before passing it on (the server's answers pass at once: netem on the host's link delays what the
host sends). Each round runs the same sweep twice, on the server direct and through the relay,
alternating (the machine is shared). Reported are medians of: the trial loop per trial after the
first trial (from trial 1's start to the last trial's end: what each trial costs once the sweep
runs, the figure with a target), the first trial (it ends before MLflow is ready, and waits for
its run: start-up), the whole loop per trial and the whole run (start-up and finalize wait on the
server by design).

Then the whole host far, as netem on its link would make it: PostgreSQL (the Optuna storage) through
a relay of its own too, sweep and the glue once each.

Usage: .venv/bin/python bench/slowlink.py [--rounds 3] [--trials 40] [--trees 30] [--delay-ms 50] [--far-trials 15]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scaling import postgres_database

import measure as m
from bench import params_of, say, workload
from report import detail, figure

TARGET = 1.10  # sweep's trial loop after the first trial, 50 ms away, per trial, against 0 ms away
STUDY = "slowlink"  # the glue's study: the space file's name (each sweep run names its own)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Forward one direction, each chunk `delay_s` after it arrived, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    while True:
        chunk = await reader.read(65536)
        await queue.put((time.monotonic() + delay_s, chunk))
        if not chunk:
            break
    await sender


async def _serve(listen_port: int, target_port: int, delay_s: float, ready: threading.Event) -> None:
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(_pipe(client_reader, server_writer, delay_s),
                                 _pipe(server_reader, client_writer, 0.0))
        except (ConnectionError, OSError):
            client_writer.close()

    server = await asyncio.start_server(relay, "127.0.0.1", listen_port)
    ready.set()
    async with server:
        await server.serve_forever()


@contextmanager
def slow_link(url: str, delay_s: float) -> Iterator[str]:
    """A relay to the server at `url` that holds what the client sends for `delay_s`; its URL."""
    port, target = m.free_port(), int(url.rsplit(":", 1)[1])
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(_serve(port, target, delay_s, ready)),
                              daemon=True)  # it ends with this process
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Timing:
    """One `sweep run`, in seconds."""

    whole: float
    loop_per_trial: float  # the first trial's start to the last one's end, over the trials
    steady_per_trial: float  # the same from the second trial's start
    first_trial: float


def timing(timed: m.Timed, trials: list[m.TrialTime], expected: int, what: str) -> Timing:
    """A run's figures from its counted trials' start and end times."""
    done = m.counted(trials)
    assert len(done) == expected, f"{what}: {len(done)} trials counted, not {expected}"
    start, end = m.loop_window(done)
    first = min(done, key=lambda t: t.number)
    assert first.end is not None
    steady_start, _ = m.loop_window([t for t in done if t is not first])
    return Timing(timed.wall_s, (end - start) / len(done), (end - steady_start) / (len(done) - 1),
                  first.end - first.start)


def sweep_once(folder: Path, tracking: str, trials: int, storage: str = "",
               read_from: str = "") -> tuple[Timing, list[dict]]:
    """One `sweep run --n-jobs 1` on its own study, its figures and its trials' params; on a journal
    file, or on the RDB `storage` (its trials read back through `read_from`, the direct URL)."""
    folder.mkdir(parents=True)
    journal = str(folder / "optuna.journal")
    timed = m.checked(m.run_timed(
        [str(m.BIN / "sweep"), "run", "-q", "--n-jobs", "1", "--config", str(folder.parent / "space.yaml"),
         "--storage", storage or journal, "--study-name", folder.name, "--experiment", folder.name,
         "--n-trials", str(trials), "--tracking-uri", tracking], folder), f"sweep run in {folder.name}")
    ran = m.study_trials(read_from or journal, folder.name)
    return timing(timed, ran, trials, folder.name), params_of(ran)


def glue_once(folder: Path, tracking: str, params: list[dict], storage: str = "", read_from: str = "") -> Timing:
    """The glue a user writes instead (workloads.glue: Optuna + MLflowCallback, logging from the
    trial's own process) on the same param sets; on a journal file, or on the RDB `storage` (its
    trials read back through `read_from`, the direct URL)."""
    journal = folder / "optuna.journal"
    spec = {"space": str(folder.parent / "space.yaml"), "journal": str(journal), "tracking_uri": tracking,
            "params": params, "storage": storage}
    timed, _ = workload("glue", spec, folder)
    return timing(timed, m.study_trials(read_from or str(journal), STUDY), len(params), folder.name)


def whole_host_far(root: Path, tracking: str, delay_s: float, trials: int) -> dict[str, Timing]:
    """The Optuna storage 50 ms away too, as netem on a worker host's link would put it: sweep and
    the glue on PostgreSQL through a relay, the runs to the far tracking server, once each."""
    with slow_link("http://127.0.0.1:5432", delay_s) as far_db:
        port = int(far_db.rsplit(":", 1)[1])
        say("slow link, the whole host far: sweep ...")
        with far_database(port) as (through, direct):
            sweep, params = sweep_once(root / "sweep-host-far", tracking, trials, through, direct)
        say("slow link, the whole host far: glue ...")
        with far_database(port) as (through, direct):
            glue = glue_once(root / "glue-host-far", tracking, params, through, direct)
    return {"sweep": sweep, "glue": glue}


@contextmanager
def far_database(port: int) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database, dropped after: its URL through the relay on `port`, and direct."""
    url, drop = postgres_database()
    try:
        direct = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        yield direct.replace(":5432/", f":{port}/", 1), direct
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--trees", type=int, default=30)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--far-trials", type=int, default=15, help="trials with the whole host far (seconds each)")
    args = parser.parse_args()
    print(m.machine())
    results: dict[tuple[str, str], list[Timing]] = {(tool, link): [] for tool in ("sweep", "glue")
                                                     for link in ("direct", "slow")}
    with tempfile.TemporaryDirectory(prefix="sweep-slowlink-") as tmp:
        root = Path(tmp)
        m.write_space(root / "space.yaml", dataset="breast_cancer", rows=0, n_trials=args.trials, trees=args.trees,
                      study=STUDY)
        with m.mlflow_server(root / "server") as url, slow_link(url, args.delay_ms / 1000) as slow:
            say("slow link: an untimed sweep warms the server and the caches ...")
            sweep_once(root / "warm-up", url, args.trials)
            server = {"direct": url, "slow": slow}
            for i in range(args.rounds):
                params: list[dict] = []
                for link, tracking in server.items():
                    say(f"slow link, round {i + 1} of {args.rounds}: sweep, {link} ...")
                    timed, drawn = sweep_once(root / f"sweep-{link}-{i}", tracking, args.trials)
                    results["sweep", link].append(timed)
                    params = params or drawn  # the glue gets the direct sweep's draws
                for link, tracking in server.items():
                    say(f"slow link, round {i + 1} of {args.rounds}: glue, {link} ...")
                    results["glue", link].append(glue_once(root / f"glue-{link}-{i}", tracking, params))
            host_far = whole_host_far(root, slow, args.delay_ms / 1000, args.far_trials)
    report(results, args)
    report_host_far(host_far, results, args)


def report(results: dict[tuple[str, str], list[Timing]], args: argparse.Namespace) -> None:
    median = {key: Timing(*(statistics.median(getattr(t, field) for t in timings)
                            for field in ("whole", "loop_per_trial", "steady_per_trial", "first_trial")))
              for key, timings in results.items()}
    print(f"\nslow link: {args.trials} trials of {args.trees} trees, the shipped space on breast_cancer, one"
          f" process, against a local mlflow server, direct and {args.delay_ms:g} ms away (medians of {args.rounds};"
          " the glue runs the sweep's param sets)")
    for (tool, link), t in median.items():
        print(f"  {tool} {link:6} per trial after the first {t.steady_per_trial * 1000:6.1f} ms   first trial"
              f" {t.first_trial * 1000:6.0f} ms   whole loop {t.loop_per_trial * 1000:6.1f} ms per trial"
              f"   whole run {t.whole:5.1f} s")
    direct, far = median["sweep", "direct"], median["sweep", "slow"]
    ratio = far.steady_per_trial / direct.steady_per_trial
    figure(f"sweep: trial loop per trial after the first, mlflow server {args.delay_ms:g} ms away / 0 ms",
           f"{ratio:.2f}x", f"<= {TARGET:.2f}x", ratio <= TARGET)
    glue_ratio = median["glue", "slow"].steady_per_trial / median["glue", "direct"].steady_per_trial
    detail(f"the glue, the same: {glue_ratio:.2f}x (MLflowCallback logs from the trial's process, so each"
           " request's round trip is the trial's)")
    detail("sweep's recorder process does every MLflow request, and completes runs in threads against a server:"
           " a trial puts two messages on its queue, and waits for its run id only when it ends before the run"
           " is created")
    detail(f"sweep's first trial: {far.first_trial * 1000:.0f} ms against {direct.first_trial * 1000:.0f} ms (it"
           " ends before MLflow is ready and waits for its run, which the recorder creates after its own start-up"
           f" requests); the whole loop per trial, with it: {far.loop_per_trial / direct.loop_per_trial:.2f}x")
    detail(f"sweep's whole run: {far.whole:.1f} s against {direct.whole:.1f} s (start-up checks the server,"
           " and the finalize logs, registers and promotes through it)")



def report_host_far(far: dict[str, Timing], near: dict[tuple[str, str], list[Timing]],
                    args: argparse.Namespace) -> None:
    print(f"\nthe whole host {args.delay_ms:g} ms away: {args.far_trials} trials on PostgreSQL, the storage and the"
          " tracking server both through relays (once each; the glue runs the sweep's param sets)")
    for tool, t in far.items():
        direct = statistics.median(x.steady_per_trial for x in near[tool, "direct"])
        print(f"  {tool:5} per trial after the first {t.steady_per_trial * 1000:7.1f} ms ({direct * 1000:.1f} ms with"
              f" nothing far, journal file)   first trial {t.first_trial * 1000:6.0f} ms   whole run {t.whole:6.1f} s")
    ratio = far["sweep"].steady_per_trial / far["glue"].steady_per_trial
    figure("the whole host far: sweep per trial / the glue's", f"{ratio:.2f}x", "<= 1.00x", ratio <= 1.0)
    detail("every Optuna storage call is a transaction of several statements, each a round trip; a sweep trial"
           " makes more calls than the glue's (its worker stamp and measures as user attrs, one transaction"
           " each, and the tally after each trial; docs/scaling-out.md counts them)")


if __name__ == "__main__":
    main()
