"""Fault injection: the result store, the grid and the command line under hostile use.

    python benchmarks/faults.py                 # the figures, about 10 minutes on 2 cores
    python benchmarks/faults.py --kills 10 --ctrl-c 10 --json faults.json

Everything runs on a small smoke grid of plain LSTMs (three languages x two
freeze modes, one restart: 6 runs in 3 groups) in a temporary store. LSTM
records do not depend on which replicas share a group, so every run that a
resumed, concurrent or distributed grid computes must equal the clean run's
bit for bit (timings, ``env``, ``created`` and ``group`` aside).

Faults, in this order on one store:

1. ``kill -9`` of a running grid (its whole process group: CLI, scheduler,
   workers) at a random moment, ``--kills`` times, alternating the in-process
   grid (``--scheduler sync``) and a LocalCluster of two worker processes;
   after each, every record file must pass the schema and every record that
   was there before must be unchanged;
2. every way of corrupting a record (:data:`CORRUPTIONS`), planted in stored
   records; the next grids must move each aside with one warning line and
   retrain it;
3. two grids started at the same moment on the same store, twice: together
   they must train each missing run exactly once;
4. a dask scheduler and two ``dask worker`` processes (separate OS
   processes); one worker is SIGKILLed while it holds a claim; the grid
   must finish with every run trained once (``--no-dask`` skips this);
5. Ctrl-C (SIGINT to the process group) at a random moment, ``--ctrl-c``
   times: one line, exit status 130;
6. one replica of a group with an absurd learning rate: it must be marked
   diverged, the other must train on and equal its run alone;
7. a planted weights file that runs a command when unpickled: refused;
8. :data:`BAD_INPUTS`: each a separate ``marnn`` process that must exit with
   status 2 and one line, before any work.

At the end the store must be complete, valid and equal to the clean run, with
no temporary or lock file left. The figures printed: faults injected /
survived, records lost / corrupted, duplicate trainings, bad inputs tried /
clean one-line errors / silently accepted / tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from marnn import grid, store  # noqa: E402

TASKS = ["count-3", "marked-copy", "unmarked-copy"]
GRID_ARGS = ["grid", "--scale", "smoke", "--tasks", *TASKS, "--models", "lstm", "--modes", "none", "m",
             "--restarts", "1"]
IGNORED = ("env", "created", "wall_time_s", "group")


def planned() -> list[dict]:
    return grid.formal_grid("smoke", tasks=TASKS, models=["lstm"], modes=["none", "m"], restarts=1)


def env() -> dict:
    return dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def marnn(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marnn.cli", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout, cwd=REPO)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "marnn.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO, start_new_session=True)


def grid_signalled(root, local: bool, delay: float, sig: int):
    """Start the fault grid on ``root`` (a LocalCluster if ``local``, else in process), send its process
    group ``sig`` after ``delay`` seconds; returns the process and whether it had finished already."""
    proc = start(*GRID_ARGS, "--results", str(root), *(["--workers", "2"] if local else ["--scheduler", "sync"]))
    time.sleep(delay)
    finished = proc.poll() is not None
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    return proc, finished

def comparable(rec: dict) -> dict:
    """A record without what legitimately differs between two runs of it."""
    out = {k: v for k, v in rec.items() if k not in IGNORED}
    out["curve"] = [{k: v for k, v in row.items() if k != "seconds"} for row in rec["curve"]]
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    """Every record file (valid or not) under the store, by path."""
    return {str(p): p.read_bytes() for kind in ("formal", "ptb") for p in (root / kind).rglob("*.json")
            if not p.name.startswith(".")}


def invalid_files(root: Path) -> list[str]:
    """Record files that fail the schema (read without moving them)."""
    bad = []
    for path, data in snapshot(root).items():
        try:
            why = store.problems(json.loads(data, parse_constant=store._no_constants), path)
        except ValueError as err:
            why = str(err)
        if why:
            bad.append(f"{path}: {why}")
    return bad


def written(out: str) -> int:
    m = re.search(r"(\d+) written", out)
    return int(m.group(1)) if m else 0


# ---- corruptions ------------------------------------------------------------------
def _edit(fn):
    def apply(text: str) -> str:
        rec = json.loads(text)
        fn(rec)
        return json.dumps(rec)
    return apply


CORRUPTIONS = {
    "torn write": lambda t: t[: len(t) // 3],
    "empty file": lambda t: "",
    "accuracy 7.5": _edit(lambda r: r["bins"]["bin0"].update(accuracy=7.5)),
    "cross-entropy -5": _edit(lambda r: r["valid"].update(cross_entropy=-5.0)),
    "string \"0.9\"": _edit(lambda r: r["bins"]["bin1"].update(accuracy="0.9")),
    "missing bins": _edit(lambda r: r.pop("bins")),
    "missing valid": _edit(lambda r: r.pop("valid")),
    "NaN": lambda t: t.replace('"accuracy": ', '"accuracy": NaN, "was": ', 1),
    "perplexity 0.5": _edit(lambda r: r["bins"]["bin2"].update(perplexity=0.5)),
    "wrong key": _edit(lambda r: r.update(key="0123456789abcdef")),
    "a bin dropped": _edit(lambda r: r["bins"].pop("bin2")),
}


def corrupt(root: Path, kinds: list[str]) -> dict[str, str]:
    """Plant ``kinds`` in as many stored records (sorted order); returns path -> kind."""
    paths = sorted(snapshot(root))
    done = {}
    for path, kind in zip(paths, kinds):
        Path(path).write_text(CORRUPTIONS[kind](Path(path).read_text()))
        done[path] = kind
    return done


# ---- a real dask cluster -----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """``dask scheduler`` and ``workers`` x ``dask worker --no-nanny`` as separate OS processes on 127.0.0.1."""

    def __init__(self, workers: int = 2, tmp: Path | None = None):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.tmp = Path(tmp or tempfile.mkdtemp(prefix="marnn-dask-"))
        dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
        logs = self.tmp / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.scheduler = self._spawn([dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard"], logs / "scheduler.log")
        self._wait_port()
        self.workers = [self._spawn([dask, "worker", self.address, "--nthreads", "1", "--no-nanny",
                                     "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
                                     "--local-directory", str(self.tmp / f"w{i}"), "--death-timeout", "60"],
                                    logs / f"worker{i}.log") for i in range(workers)]
        self._wait_workers(workers)

    def _spawn(self, argv, log: Path) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env(), cwd=REPO,
                                start_new_session=True)

    def _wait_port(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("dask scheduler did not start")

    def _wait_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.workers if w.poll() is None}

    def close(self) -> None:
        for p in [*self.workers, self.scheduler]:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in [*self.workers, self.scheduler]:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def held_by(root: Path) -> dict[int, Path]:
    """pid -> a lock file it holds in the store."""
    out = {}
    for lock in root.rglob(".*.lock"):
        try:
            out[int(json.loads(lock.read_text())["pid"])] = lock
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return out


def worker_kill(root: Path, tmp: Path, timeout: float = 600) -> dict:
    """A smoke grid on a real scheduler with two workers; SIGKILL the first worker seen holding a claim."""
    cluster = DaskCluster(2, tmp)
    try:
        proc = start(*GRID_ARGS, "--results", str(root), "--scheduler", cluster.address)
        victim, deadline = None, time.time() + timeout
        while victim is None and proc.poll() is None and time.time() < deadline:
            holders = set(held_by(root)) & cluster.worker_pids()
            if holders:
                victim = sorted(holders)[0]
                os.kill(victim, signal.SIGKILL)
                next(w for w in cluster.workers if w.pid == victim).wait()  # reaped, as its parent would
            time.sleep(0.05)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
        return {"rc": proc.returncode, "out": out, "err": err, "killed": victim,
                "workers_alive": len(cluster.worker_pids())}
    finally:
        cluster.close()


# ---- bad inputs ----------------------------------------------------------------------
def bad_inputs(tmp: Path) -> list[list[str]]:
    f = tmp / "a-file"
    f.write_text("x")
    r = ["--results", str(tmp / "store")]
    t = ["train", "--task", "count-3", "--model", "lstm", "--scale", "smoke"]
    g = ["grid", "--scale", "smoke", "--tasks", "count-3", "--models", "lstm"]
    p = ["ptb", "--model", "lstm-256", "--scale", "smoke"]
    return [
        [*t, "--results", "/proc/x"], [*t, "--results", str(f)], [*g, "--results", "/proc/x"],
        [*g, "--results", str(f)], [*p, "--results", str(f)], [*g, "--results", "/sys/x"],
        [*t, "--seed", "-1", *r], [*t, "--seed", str(2**64), *r], [*t, "--seed", "abc", *r],
        [*t, "--seed", "1.5", *r], [*t, "--data-seed", "-1", *r], [*t, "--data-seed", str(2**40), *r],
        [*p, "--seed", "-1", *r], [*p, "--seed", str(2**33), *r],
        [*t, "--device", "nope", *r], [*t, "--device", "cuda:99", *r], [*t, "--device", "meta", *r],
        [*g, "--device", "nope", *r], [*p, "--device", "nope", *r],
        [*t, "--threads", "0", *r], [*t, "--threads", "-1", *r], [*g, "--threads", "0", *r],
        [*p, "--threads", "0", *r], [*t, "--max-epochs", "0", *r], [*t, "--max-epochs", "-3", *r],
        [*t, "--train-lengths", "0", "3", *r], [*t, "--train-lengths", "9", "3", *r],
        [*t, "--train-lengths", "4", "5", *r],
        [*g, "--max-replicas", "-1", *r], [*g, "--max-replicas", "0", *r], [*g, "--workers", "0", *r],
        [*g, "--workers", "-2", *r], [*g, "--restarts", "0", *r], [*g, "--restarts", "-1", *r],
        [*g, "--scheduler", "foo", *r], [*g, "--scheduler", "tcp://nowhere.invalid:1", *r],
        [*g, "--scheduler", f"tcp://127.0.0.1:{free_port()}", *r], [*g, "--scheduler", "tcp://127.0.0.1", *r],
        [*g, "--scheduler", "http://127.0.0.1:8786", *r], [*g, "--scheduler", "tcp://:8786", *r],
        [*g, "--scheduler", "tcp://127.0.0.1:70000", *r], [*g, "--workers", "2", "--scheduler", "sync", *r],
        [*g, "--embedding-group", "memory", *r],
        ["train", "--task", "nope", "--model", "lstm", *r], ["train", "--task", "count-3", "--model", "nope", *r],
        [*t, "--freeze", "x", *r], [*t[:-1], "huge", *r], ["grid", "--scale", "smoke", "--tasks", "bogus", *r],
        ["grid", "--scale", "smoke", "--models", "rns-9", *r], ["grid", "--scale", "smoke", "--modes", "all", *r],
        ["grid", "--scale", "smoke", "--ptb", "--models", "lstm", *r],
        ["grid", "--scale", "smoke", "--ptb", "--tasks", "count-3", *r],
        ["ptb", "--model", "jm-10", *r], [*p, "--embedding-group", "x", *r],
        ["train", "--model", "lstm", *r], ["frobnicate"], [],
        ["bench", "--threads", "0"], ["bench", "--threads", "-1"], ["bench", "--threads=x"],
        ["bench", "--models", "nope"], ["bench", "--backend", "nope"],
    ]


def check_bad_input(argv: list[str]) -> str:
    """'clean' (status 2, one line, no traceback), 'accepted' (status 0), 'traceback' or 'other'."""
    out = marnn(*argv, timeout=120)
    if "Traceback" in out.stderr:
        return "traceback"
    if out.returncode == 0:
        return "accepted"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    return "clean" if out.returncode == 2 and len(lines) == 1 else "other"


# ---- the run ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=6, help="kill -9 at random moments (default 6)")
    ap.add_argument("--ctrl-c", type=int, default=4, help="Ctrl-C at random moments (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    ap.add_argument("--no-dask", action="store_true", help="skip the scheduler + workers scenario")
    ap.add_argument("--no-inputs", action="store_true", help="skip the bad inputs (about 3 minutes)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    summary = run(args.kills, args.ctrl_c, args.seed, dask=not args.no_dask, inputs=not args.no_inputs)
    width = max(len(k) for k in summary["figures"])
    for k, v in summary["figures"].items():
        print(f"{k:<{width}}  {v}")
    for line in summary["problems"]:
        print("PROBLEM:", line)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if summary["problems"] else 0


def run(kills: int = 2, ctrl_c: int = 1, seed: int = 0, *, dask: bool = True, inputs: bool = True,
        workdir: Path | None = None, log=print) -> dict:
    rng = random.Random(seed)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="marnn-faults-"))
    clean, root = tmp / "clean", tmp / "store"
    configs = planned()
    problems: list[str] = []
    fig = {"faults injected": 0, "faults survived": 0, "records lost": 0, "records corrupted": 0,
           "duplicate trainings": 0, "bad inputs tried": 0, "clean one-line errors": 0,
           "silently accepted": 0, "tracebacks": 0}

    def survive(ok: bool, what: str) -> None:
        fig["faults injected"] += 1
        fig["faults survived"] += bool(ok)
        if not ok:
            problems.append(what)

    def check_kept(before: dict[str, bytes], after: dict[str, bytes], planted: set[str] = frozenset()) -> int:
        """Records there before, not planted-corrupt, and now gone or changed."""
        return sum(1 for p, b in before.items() if p not in planted and after.get(p) != b)

    log("clean run ...")
    t0 = time.perf_counter()
    out = marnn(*GRID_ARGS, "--results", str(clean), "--scheduler", "sync")
    span = time.perf_counter() - t0  # the kills land anywhere in a run's life, start-up included
    assert out.returncode == 0 and written(out.stdout) == len(configs), out.stderr[-2000:]
    log(f"  {span:.1f} s")
    reference = {store.config_key(r["config"]): comparable(r) for _, r in store.iter_records(clean)}

    # 1. kill -9 at random moments
    for i in range(kills):
        local = i % 2 == 1
        for task in rng.sample(TASKS, rng.randint(1, len(TASKS))):  # work for the grid to be killed in
            for c in configs:
                if c["task"] == task:
                    store.record_path(c, root).unlink(missing_ok=True)
        before = snapshot(root)
        delay = rng.uniform(0.5, span + 8.0) if local else rng.uniform(0.3, span)
        proc, finished = grid_signalled(root, local, delay, signal.SIGKILL)
        proc.communicate()
        time.sleep(0.3)
        after = snapshot(root)
        bad = invalid_files(root)
        lost = check_kept(before, after)
        fig["records corrupted"] += len(bad)
        fig["records lost"] += lost
        log(f"kill -9 #{i + 1} ({'LocalCluster' if local else 'sync'}) after {delay:.1f} s"
            f"{' (had finished)' if finished else ''}: {len(after)} records, {len(bad)} invalid, {lost} lost")
        survive(not bad and not lost, f"kill #{i + 1}: invalid {bad}, lost {lost}")

    # resume: everything missing is trained once
    missing = len(store.missing(configs, root))
    out = marnn(*GRID_ARGS, "--results", str(root), "--scheduler", "sync")
    fig["duplicate trainings"] += max(0, written(out.stdout) - missing)
    if out.returncode != 0 or store.missing(configs, root):
        problems.append(f"resume failed: {out.stdout[-300:]} {out.stderr[-500:]}")

    # 2 + 3. corruptions, healed by two grids started at once (twice)
    kinds = list(CORRUPTIONS)
    for half in (kinds[: len(configs)], kinds[len(configs):]):
        before = snapshot(root)
        planted = corrupt(root, half)
        procs = [start(*GRID_ARGS, "--results", str(root), "--scheduler", "sync") for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        n_written = sum(written(o) for o, _ in outs)
        warnings = sum(e.count("invalid record moved aside") for _, e in outs)
        after = snapshot(root)
        lost = check_kept(before, after, set(planted))
        fig["records lost"] += lost
        fig["duplicate trainings"] += max(0, n_written - len(planted))
        equal = all(comparable(store.read_record(p)) == reference[store.config_key(json.loads(after[p])["config"])]
                    for p in planted if p in after)
        moved = all((root / store.INVALID_DIR / Path(p).relative_to(root)).exists() for p in planted)
        rcs = [p.returncode for p in procs]
        tracebacks = sum("Traceback" in e for _, e in outs)
        log(f"{len(planted)} corruptions ({', '.join(half)}) + two grids at once: exit {rcs}, "
            f"{n_written} trained, {warnings} warning lines, moved aside {moved}, equal to clean {equal}")
        for path, kind in planted.items():
            survive(path in after and moved and equal and rcs == [0, 0] and not tracebacks,
                    f"corruption {kind!r} of {path}: exit {rcs}, moved {moved}, equal {equal}")
        survive(rcs == [0, 0] and n_written == len(planted) and warnings == len(planted) and not tracebacks,
                f"concurrent grids: exit {rcs}, trained {n_written} of {len(planted)}, warnings {warnings}")

    # 4. a real scheduler and two workers, one SIGKILLed while training
    if dask:
        victims = [c for c in configs if c["task"] == TASKS[0]] + [c for c in configs if c["task"] == TASKS[1]]
        before = snapshot(root)
        for c in victims:
            store.record_path(c, root).unlink()
        res = worker_kill(root, tmp / "dask")
        after = snapshot(root)
        ok = (res["rc"] == 0 and res["killed"] is not None and not store.missing(configs, root)
              and not invalid_files(root) and written(res["out"]) <= len(victims))
        equal = all(comparable(store.load_record(c, root)) == reference[store.config_key(c)] for c in victims)
        fig["duplicate trainings"] += max(0, written(res["out"]) - len(victims))
        fig["records lost"] += check_kept({p: b for p, b in before.items()
                                           if p not in {str(store.record_path(c, root)) for c in victims}}, after)
        log(f"dask worker SIGKILL (pid {res['killed']}): exit {res['rc']}, {written(res['out'])} of "
            f"{len(victims)} trained, equal to clean {equal}; {res['err'].strip()[-200:]}")
        survive(ok and equal, f"dask worker kill: {res}")

    # 5. Ctrl-C at random moments
    for i in range(ctrl_c):
        victims = [c for c in configs if c["task"] == TASKS[i % len(TASKS)]]
        for c in victims:
            store.record_path(c, root).unlink(missing_ok=True)
        before = snapshot(root)
        local = i % 2 == 0
        delay = rng.uniform(0.5, span)  # before ~0.1-0.3 s, Python itself is starting (site), not marnn
        proc, finished = grid_signalled(root, local, delay, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        # exit 0 is right only for a grid that had finished its work when the signal came (it may still
        # have been shutting down): then every run it was given is stored
        done = proc.returncode == 0 and not store.missing(victims, root)
        ok = (proc.returncode == 130 and err == "marnn: interrupted\n") or (finished and proc.returncode == 0) or done
        lost = check_kept(before, snapshot(root))
        fig["records lost"] += lost
        fig["tracebacks"] += "Traceback" in err
        log(f"Ctrl-C #{i + 1} ({'LocalCluster' if local else 'sync'}) after {delay:.1f} s: exit {proc.returncode}, "
            f"stderr {err!r}"[:300])
        survive(ok and not invalid_files(root) and not lost, f"ctrl-c #{i + 1}: exit {proc.returncode} {err[-500:]!r}")
    out = marnn(*GRID_ARGS, "--results", str(root), "--scheduler", "sync")
    if out.returncode != 0:
        problems.append(f"grid after Ctrl-C failed: {out.stderr[-500:]}")

    # 6. an absurd learning rate in one replica of a group
    from marnn.scales import get_scale
    from marnn.train import formal_config
    from marnn.train.formal import train_formal

    sc = get_scale("smoke").with_(lr_range=(1e-3, 1e4), max_epochs=3)
    pair = [formal_config("count-3", "lstm", "none", s, sc) for s in (8, 4)]  # lr 0.015 and 7223
    try:
        both = train_formal(pair)
        alone = train_formal(pair[:1])[0]
        ok = (both[1]["status"] == "diverged" and both[0]["status"] != "diverged"
              and comparable(both[0]) == comparable(alone))
        detail = f"{both[1]['status']} at {both[1]['diverged']}; healthy replica equal to its run alone: " \
                 f"{comparable(both[0]) == comparable(alone)}"
    except Exception as err:  # noqa: BLE001 - the fault must not escape
        ok, detail = False, f"{type(err).__name__}: {err}"
    log(f"absurd learning rate: {detail}")
    survive(ok, f"absurd learning rate: {detail}")

    # 7. a planted weights file that runs a command when loaded
    marker = tmp / "pwned"
    planted = formal_config("count-3", "lstm", "none", 0, "smoke")
    path = store.weights_path(planted, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"key": store.config_key(planted), "state": Evil()}, path, pickle_module=pickle)
    refused = store.load_weights(planted, root) is None
    ok = refused and not marker.exists() and not path.exists()
    log(f"malicious weights file: refused {refused}, command ran {marker.exists()}")
    survive(ok, f"malicious weights file: refused {refused}, ran {marker.exists()}")

    # the final store
    final_ok = (not store.missing(configs, root) and not invalid_files(root)
                and {store.config_key(r["config"]): comparable(r) for _, r in store.iter_records(root)} == reference
                and not list(root.rglob(".*.tmp")) and not list(root.rglob(".*.lock")))
    if not final_ok:
        problems.append("final store is not complete, valid and equal to the clean run")
    fig["final store complete, valid, equal to a clean run"] = final_ok

    # 8. bad inputs
    if inputs:
        for argv in bad_inputs(tmp):
            verdict = check_bad_input(argv)
            fig["bad inputs tried"] += 1
            fig["clean one-line errors"] += verdict == "clean"
            fig["silently accepted"] += verdict == "accepted"
            fig["tracebacks"] += verdict == "traceback"
            if verdict != "clean":
                problems.append(f"bad input {' '.join(argv)}: {verdict}")
        log(f"bad inputs: {fig['clean one-line errors']} of {fig['bad inputs tried']} clean")
    return {"figures": fig, "problems": problems, "workdir": str(tmp)}


if __name__ == "__main__":
    sys.exit(main())
