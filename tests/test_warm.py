"""Warm starts: a job forked from the pre-imported server gives what it gives in its own process."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from influence_signals import stages, warm

SETTINGS = {"epochs": 2, "lr": 0.1, "batch_size": 32, "options": {"n_blocks": 1, "d_block": 16}, "device": "cpu"}


def wait_for(address: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(address):
        assert time.monotonic() < deadline, "the warm server did not start listening"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server():
    handle = warm.start()
    wait_for(handle.address)
    assert os.stat(os.path.dirname(handle.address)).st_mode & 0o777 == 0o700  # a private directory
    yield handle
    warm.stop()
    deadline = time.monotonic() + 30
    while os.path.exists(os.path.dirname(handle.address)):
        assert time.monotonic() < deadline, "the server left its directory behind"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("warm_data")
    paths = {part: str(folder / f"{part}.npz") for part in ("train", "val", "pool")}
    stages.prepare("synth_tabular", {"n_rows": 300, "n_classes": 3}, "data", False, 1.0, 0.2, 0, **paths)
    return paths


def train_job(splits: dict[str, str], folder: Path, **changes: str) -> dict:
    kwargs = {"train_set": splits["train"], "val_set": splits["val"], "model": "mlp", "settings": SETTINGS, "seed": 3,
              "download": False, "checkpoints": str(folder / "checkpoints"), "history": str(folder / "history.csv"),
              "factors": str(folder / "factors"), **changes}
    return {"stage": "train", "log_file": str(folder / "job.log"), "threads": 1, "kwargs": kwargs}


def test_a_warm_job_gives_the_same_model_and_factors_as_one_in_its_own_process(server, splits, tmp_path):
    warm_folder, own_folder = tmp_path / "warm", tmp_path / "own"
    warm_folder.mkdir(), own_folder.mkdir()
    assert warm.submit(train_job(splits, warm_folder), server) == 0
    stages.run_job(**train_job(splits, own_folder))
    assert "warm start: forked from the server" in (warm_folder / "job.log").read_text()
    assert "warm start" not in (own_folder / "job.log").read_text()
    for name in ("train_features", "train_logits", "val_features", "val_logits"):
        assert np.array_equal(np.load(warm_folder / "factors" / f"{name}.npy"), np.load(own_folder / "factors" / f"{name}.npy"))
    for path in sorted((own_folder / "checkpoints").glob("*.pt")):
        ours = torch.load(path, weights_only=True)["model_state_dict"]
        theirs = torch.load(warm_folder / "checkpoints" / path.name, weights_only=True)["model_state_dict"]
        assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_a_failing_warm_job_reports_its_failure_and_writes_no_output(server, splits, tmp_path):
    job = train_job(splits, tmp_path, train_set=str(tmp_path / "missing.npz"))
    assert warm.submit(job, server) == 1
    assert "train failed" in (tmp_path / "job.log").read_text()
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "history.csv").exists()


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def package_copy(folder: Path, extra: str) -> Path:
    """A copy of the package under ``folder`` whose ``stages`` ends with ``extra``; returns its stages.py."""
    package = Path(stages.__file__).parent
    (folder / "influence_signals").mkdir(parents=True)
    for module in package.glob("*.py"):
        (folder / "influence_signals" / module.name).write_text(module.read_text())
    copied = folder / "influence_signals" / "stages.py"
    names = re.findall(r"^def (\w+)\(", extra, flags=re.MULTILINE)
    copied.write_text(copied.read_text() + "\n\n" + extra + "".join(f"\nSTAGES[{n!r}] = {n}" for n in names) + "\n")
    return copied


def client(folder: Path, job: dict, server: warm.Server) -> subprocess.Popen:
    """A job's own process, submitting ``job`` with the package copy at ``folder`` first on its path."""
    script = (f"import sys; sys.path.insert(0, {str(folder)!r}); from influence_signals import warm; "
              f"sys.exit(warm.submit({job!r}, warm.Server.decode({server.encode()!r})))")
    return subprocess.Popen([sys.executable, "-c", script])


def test_the_job_runs_the_code_on_its_own_sys_path(server, tmp_path):
    """The server never imports the package: a job whose sys.path holds another copy runs that copy."""
    copied = package_copy(tmp_path / "copy", "def marker(path: str) -> None:\n    Path(path).write_text(__file__)\n")
    job = {"stage": "marker", "log_file": None, "threads": 1, "kwargs": {"path": str(tmp_path / "marker.txt")}}
    assert client(tmp_path / "copy", job, server).wait(timeout=120) == 0
    assert (tmp_path / "marker.txt").read_text() == str(copied)


def test_stopping_the_jobs_own_process_stops_the_job(server, tmp_path):
    """Snakemake cancels a job by signalling its process: the forwarded signal ends the forked child."""
    package_copy(tmp_path / "copy", "def sleeper(path: str) -> None:\n    Path(path).write_text(str(os.getpid()))\n"
                                    "    import time\n    time.sleep(120)\n")
    job = {"stage": "sleeper", "log_file": None, "threads": 1, "kwargs": {"path": str(tmp_path / "pid.txt")}}
    process = client(tmp_path / "copy", job, server)
    wait_for(str(tmp_path / "pid.txt"))
    time.sleep(0.2)
    child = int((tmp_path / "pid.txt").read_text())
    process.terminate()
    assert process.wait(timeout=30) != 0
    deadline = time.monotonic() + 30
    while running(child):
        assert time.monotonic() < deadline, "the job's child outlived its cancelled process"
        time.sleep(0.1)


def test_a_cancelled_warm_job_leaves_no_half_written_output(server, tmp_path):
    package_copy(tmp_path / "copy", "def half(path: str) -> None:\n    from .artifacts import atomic_path\n"
                                    "    with atomic_path(path, directory=True) as tmp:\n"
                                    "        (tmp / 'part').write_text('x')\n"
                                    "        Path(path + '.pid').write_text(str(os.getpid()))\n"
                                    "        import time\n        time.sleep(120)\n")
    out = tmp_path / "out" / "factors"
    job = {"stage": "half", "log_file": None, "threads": 1, "kwargs": {"path": str(out)}}
    process = client(tmp_path / "copy", job, server)
    wait_for(str(out) + ".pid")
    assert len(list(out.parent.glob(".factors.*"))) == 1  # the temporary folder, being written
    process.terminate()
    assert process.wait(timeout=30) != 0
    deadline = time.monotonic() + 30
    while list(out.parent.glob(".factors.*")):
        assert time.monotonic() < deadline, "the cancelled job left its temporary folder"
        time.sleep(0.1)
    assert not out.exists()


def test_without_a_server_or_in_another_interpreter_nothing_runs_warm(server, splits, tmp_path, monkeypatch):
    job = train_job(splits, tmp_path)
    assert warm.submit(job, warm.Server(str(tmp_path / "absent.sock"), server.pid, server.token)) is None
    monkeypatch.delenv(warm.ENV, raising=False)
    assert warm.submit(job) is None
    monkeypatch.setattr(warm, "_interpreter", lambda: ("/another/python", "/another/prefix"))
    assert warm.submit(job, server) is None  # the server refused: it runs another interpreter
    assert not (tmp_path / "checkpoints").exists()


def test_the_server_exits_when_the_process_that_started_it_goes(tmp_path):
    script = ("from influence_signals import warm; import sys, time; print(warm.start().encode(), flush=True); "
              "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    handle = warm.Server.decode(parent.stdout.readline())
    wait_for(handle.address)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while os.path.exists(os.path.dirname(handle.address)):
        assert time.monotonic() < deadline, "the server outlived the process that started it"
        time.sleep(0.2)


LAUNCHER = """
import os, subprocess, sys, time
from influence_signals import warm
launched = warm.start(wait=0)  # as the debug command does, before Snakemake: still importing here
onstart = "from influence_signals import warm; print(warm.ready().encode(), flush=True)"  # the Snakefile's
child = subprocess.run([sys.executable, "-c", onstart], capture_output=True, text=True, check=True)
print(child.stdout.strip() == launched.encode(), os.path.exists(launched.address))
started = time.monotonic()
warm.stop()
print(round(time.monotonic() - started, 3), os.path.exists(os.path.dirname(launched.address)))
alone = subprocess.run([sys.executable, "-c", onstart.replace(".encode()", ".pid") + "; warm.stop()"],
                       capture_output=True, text=True, check=True)
print(int(alone.stdout) != launched.pid)
"""


def test_snakemakes_process_uses_the_server_its_launcher_started_and_stop_is_prompt():
    # in a process of its own: ``start`` there would stop this module's server (one per process)
    lines = subprocess.run([sys.executable, "-c", LAUNCHER], capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != warm.ENV}).stdout.splitlines()
    assert lines[0] == "True True"  # the same server, not a second one, and ready() returned once it listened
    seconds, left = lines[1].split()
    assert float(seconds) < 1.0 and left == "False"  # the signal wakes its loop; no teardown of torch & co.
    assert lines[2] == "True"  # none named (after stop): it starts its own


def raw_request(server: warm.Server, token: str, job: dict) -> bytes:
    """Send a request the way a client does, with ``token``; the server's one-byte-plus answer ("" if none)."""
    import json
    import socket

    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(server.address)
    request = {"token": token, "job": job, "python": list(warm._interpreter()), "cwd": os.getcwd(),
               "env": dict(os.environ), "path": list(sys.path), "argv": ["x"]}
    data = json.dumps(request).encode()
    socket.send_fds(connection, [warm._HEADER.pack(len(data)) + data], [0, 1, 2])
    connection.settimeout(30)
    answer = b""
    try:
        while chunk := connection.recv(64):
            answer += chunk
    except OSError:
        pass
    connection.close()
    return answer


def test_a_request_without_the_servers_token_runs_nothing(server, tmp_path):
    job = {"stage": "marker", "log_file": None, "threads": 1, "kwargs": {"path": str(tmp_path / "ran.txt")}}
    answer = raw_request(server, "not-the-token", job)
    assert answer[:1] == b"N" and not (tmp_path / "ran.txt").exists()


def test_another_users_connection_is_closed_before_anything_is_read(server, tmp_path):
    """A process of another uid: the private directory stops it; opened up, the server's peer check does."""
    if os.getuid() != 0:
        pytest.skip("switching to another uid needs root")
    folder = os.path.dirname(server.address)
    script = (f"import os, socket\nos.setgid(65534); os.setuid(65534)\n"
              f"s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
              f"try:\n    s.connect({server.address!r})\nexcept PermissionError:\n    print('refused by the folder'); raise SystemExit\n"
              f"try:\n    s.sendall(b'\\x00\\x00\\x00\\x10' + b'x' * 16); s.settimeout(10); answer = s.recv(8)\n"
              f"except (BrokenPipeError, ConnectionResetError):\n    answer = b''\n"
              f"print('closed' if answer == b'' else answer)")
    closed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert closed.stdout.strip() == "refused by the folder", closed.stderr
    os.chmod(folder, 0o755)
    os.chmod(server.address, 0o777)
    try:
        opened = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(folder, 0o700)
    assert opened.stdout.strip() == "closed", opened.stderr  # closed unread: no fork, no answer


def test_a_squatting_listener_receives_nothing(server, splits, tmp_path):
    """A listener at the named path that is not the server's pid gets no environment, no streams, no job."""
    import socket
    import threading

    squat = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squat.bind(str(tmp_path / "s.sock"))
    squat.listen(1)
    received = []

    def accept() -> None:
        connection, _ = squat.accept()
        connection.settimeout(5)
        try:
            received.append(connection.recv(1 << 20))
        except OSError:
            received.append(b"")
        connection.close()

    thread = threading.Thread(target=accept)
    thread.start()
    job = train_job(splits, tmp_path)
    assert warm.submit(job, warm.Server(str(tmp_path / "s.sock"), server.pid, server.token)) is None
    thread.join(10)
    squat.close()
    assert received == [b""] and not (tmp_path / "checkpoints").exists()


def test_sweep_removes_the_folders_of_killed_servers_only(server, tmp_path):
    import socket

    stale = Path(tempfile.mkdtemp(prefix=warm.PREFIX))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(stale / "sock"))  # a socket file nobody listens on: what SIGKILL leaves
    dead.close()
    removed = warm.sweep()
    assert str(stale) in removed and not stale.exists()
    assert os.path.exists(server.address)  # the live server's folder stays


def test_sweep_keeps_the_folder_of_a_server_still_importing(tmp_path):
    starting = Path(tempfile.mkdtemp(prefix=warm.PREFIX))  # no socket yet, no pid file yet: a moment after mkdtemp
    importing = Path(tempfile.mkdtemp(prefix=warm.PREFIX))
    (importing / "pid").write_text(str(os.getpid()))  # a live server that has not bound its socket
    gone = Path(tempfile.mkdtemp(prefix=warm.PREFIX))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (gone / "pid").write_text(str(child.pid))  # its server died before it listened
    try:
        removed = warm.sweep()
        assert starting.exists() and importing.exists()
        assert str(gone) in removed and not gone.exists()
    finally:
        for folder in (starting, importing):
            shutil.rmtree(folder, ignore_errors=True)
