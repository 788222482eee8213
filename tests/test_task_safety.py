"""What happens when things go wrong in stack_common.tasks and the pipeline's driver: local workers
die with their driver, one driver per output directory, and on Ray a task that fails for good stops
its siblings and only transient OSErrors are retried."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from stack_common.errors import UserError
from stack_common.tasks import RayConfig, is_transient, ray_options, run_tasks, shared_workers

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TEXT = "A plain English sentence that is long enough to be kept by the normalize stage."


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie waits for whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:           # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def wait_until(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def report_pid_then_sleep(report_dir: str, index: int, seconds: float) -> int:
    """A slow task: says which process runs it (file named after the pid), then sleeps."""
    Path(report_dir, f"{index}-{os.getpid()}").write_text("")
    time.sleep(seconds)
    return os.getpid()


# ---- 1. local workers die with their driver ----------------------------------------------------

DRIVER = textwrap.dedent("""
    import sys
    from stack_common.tasks import run_tasks, shared_workers
    from test_task_safety import report_pid_then_sleep

    with shared_workers():     # the runner's way: workers shared by a segment's steps
        run_tasks(report_pid_then_sleep, [(sys.argv[1], i, 60.0) for i in range(4)], workers=2)
""")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_local_workers_end_when_their_driver_is_killed(sig, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "BC_NO_PROGRESS": "1"}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], env=env)
    workers: set[int] = set()
    try:
        assert wait_until(lambda: len(list(tmp_path.iterdir())) == 2 or driver.poll() is not None, 60)
        workers = {int(p.name.split("-")[1]) for p in tmp_path.iterdir()}
        assert len(workers) == 2 and driver.pid not in workers and all(alive(pid) for pid in workers)
        driver.send_signal(sig)
        assert driver.wait(10) == -sig
        assert wait_until(lambda: not any(alive(pid) for pid in workers), 5), \
            f"workers {sorted(pid for pid in workers if alive(pid))} outlived their driver"
        assert len(list(tmp_path.iterdir())) == 2, "no worker started another task"
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()


def test_shared_workers_outlive_the_thread_that_started_them(tmp_path):
    """Why the guard is not PR_SET_PDEATHSIG: a worker spawned by a thread that has since ended
    (ProcessPoolExecutor spawns from the thread that submits) must keep serving the pool."""
    with shared_workers():
        first: list = []
        thread = threading.Thread(target=lambda: first.extend(
            run_tasks(report_pid_then_sleep, [(str(tmp_path), i, 0.3) for i in range(2)], workers=2)))
        thread.start()
        thread.join()
        second = run_tasks(report_pid_then_sleep, [(str(tmp_path), i, 0.3) for i in range(2, 4)], workers=2)
    assert len(set(first)) == 2 and set(second) == set(first)


# ---- 2. one driver per output directory --------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from data_pipeline.runner import run_lock

    with run_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()      # hold the lock until killed
""")


@pytest.mark.slow
def test_a_second_driver_on_the_same_output_is_refused_until_the_first_dies(tmp_path):
    from data_pipeline.__main__ import execute, load_config

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"{TEXT} {i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    cfg = load_config([f"input={tmp_path}/in.jsonl", f"output={out}", "stages=[normalize]", "workers=1"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UserError) as err:
            execute(cfg)
        assert f"another run (pid {holder.pid} on " in str(err.value) and str(out) in str(err.value)
        assert not (out / "run_config.json").exists(), "refused before touching the directory"
        holder.kill()                      # the kernel releases a dead holder's lock
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert execute(cfg)["docs_kept"] == 3
    assert (out / ".lock").read_text() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    # overwrite=true replaces the previous run (other input) but keeps the lock file the new run holds
    (tmp_path / "other.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    other = load_config([f"input={tmp_path}/other.jsonl", f"output={out}", "stages=[normalize]", "workers=1",
                         "overwrite=true"])
    assert execute(other)["docs_kept"] == 1 and (out / ".lock").is_file()


# ---- 3. Ray: which OSErrors are retried, and siblings of a failed task stop -------------------

@pytest.mark.parametrize("code", [errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.EAGAIN, errno.ESTALE])
def test_transient_os_errors_are_retried(code):
    assert is_transient(OSError(code, os.strerror(code)))


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.ENOSPC, errno.EROFS, errno.EISDIR, None])
def test_permanent_os_errors_are_not(code):
    err = OSError(code, os.strerror(code)) if code else OSError("AWS Error ACCESS_DENIED")
    assert not is_transient(err)


def fail_once_with_eio(marker_dir: str) -> str:
    marker = Path(marker_dir, "failed-once")
    if not marker.exists():
        marker.write_text("")
        raise OSError(errno.EIO, "Input/output error", str(marker))
    return "second attempt"


def deny_after_a_sibling_started(report_dir: str, index: int, seconds: float) -> int:
    """Task 0 fails for good (EACCES) once a sibling is running; the others are slow."""
    if index:
        return report_pid_then_sleep(report_dir, index, seconds)
    wait_until(lambda: any(Path(report_dir).iterdir()), 30)
    raise PermissionError(errno.EACCES, "Permission denied", report_dir)


@pytest.mark.slow
def test_ray_retries_a_transient_error_and_stops_everything_after_a_permanent_one(ray_cluster, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray workers cannot import tests/
    trace = tmp_path / "trace"
    cfg = RayConfig(memory_per_task_mb=ray_cluster.TASK_MEMORY_MB, max_retries=2, trace_dir=str(trace))

    def attempts(desc: str) -> list[int]:
        records = [json.loads(p.read_text()) for p in trace.glob("*.json")]
        return sorted(r["index"] for r in records if r["desc"] == desc and r["event"] == "start")

    with ray_options(cfg):
        (tmp_path / "eio").mkdir()
        assert run_tasks(fail_once_with_eio, [(str(tmp_path / "eio"),)], executor="ray",
                         ray_address=ray_cluster.address, desc="eio") == ["second attempt"]
        assert attempts("eio") == [0, 0]

        reports = tmp_path / "reports"
        reports.mkdir()
        with pytest.raises(PermissionError, match="Permission denied"):
            run_tasks(deny_after_a_sibling_started, [(str(reports), i, 60.0) for i in range(4)], workers=2,
                      executor="ray", ray_address=ray_cluster.address, desc="denied")
    assert attempts("denied").count(0) == 1, "a permanent OSError is not retried"
    started = {int(p.name.split("-")[1]) for p in reports.iterdir()}
    assert started, "a sibling ran beside the failing task"
    # Ray records the cancellation at once and kills a running task's worker right after (not
    # before run_tasks returns); without the cancel the siblings would sleep on for 60 s.
    assert wait_until(lambda: not [pid for pid in started if alive(pid)], 15), "siblings were killed"
