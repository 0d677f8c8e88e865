"""Warm starts: pipeline jobs run in a child forked from one process that has imported the heavy libraries.

Why: most of a small job's time was start-up. On 2 cores torch, scikit-learn, scipy and pandas took about
3 s of a 4.6 s signals job, and the default run has over a hundred jobs. ``start`` (from Snakemake's
``onstart`` through ``ready``, or from the debug command before it starts Snakemake) launches this file as a
script: a server that imports third-party libraries only, never this package, and forks a child per job. The
child takes over the job's working directory, environment, ``sys.path`` and standard streams, then imports the
package from the job's own ``sys.path``, so it runs the code as it is on disk. The job's own process (the
client) waits for the child, forwards signals to it and exits with its status. A job that finds no server falls
back to running in its own process, exactly as before: a job on another host (a SLURM node), one started before
the server is ready, or one in another interpreter.

Snakemake's ``benchmark:`` files keep the job's wall time, but their memory and CPU columns then cover only
the client. Set ``warm_start: false`` to measure those.

Safe on a shared machine: the socket lives in a private directory (``mkdtemp``, mode 0700); the server
reads nothing from a peer whose uid is not its own (``SO_PEERCRED``) and runs a job only with the random
token that ``start`` handed to Snakemake's process (``$INFLUENCE_SIGNALS_WARM``: address, server pid and
token, never the path alone); the client sends nothing to a listener that is not that very server pid of
its own uid; requests are JSON, never pickle.

This module imports only the standard library: the client must stay light, and the server must not import
the package.
"""
from __future__ import annotations

import hmac
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENV = "INFLUENCE_SIGNALS_WARM"
"""Names the server (``Server.encode``); set by ``start`` in Snakemake's process and inherited by its jobs."""
TOKEN_ENV = "INFLUENCE_SIGNALS_WARM_TOKEN"  # how ``start`` hands the token to the server (not on its command line)
PREFIX = "influence-signals-warm-"

PRELOADED = ("numpy", "pandas", "scipy.special", "scipy.stats", "torch", "threadpoolctl", "sklearn.base",
             "sklearn.ensemble", "sklearn.linear_model", "sklearn.model_selection", "sklearn.neighbors",
             "sklearn.preprocessing", "cleanlab.rank", "matplotlib", "matplotlib.pyplot", "seaborn")
"""Third-party modules the jobs import; one that is not installed is skipped."""

_HEADER = struct.Struct("!I")
_ACCEPTED = struct.Struct("!cq")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_REQUEST = 64 * 2**20
_server: subprocess.Popen[bytes] | None = None


@dataclass(frozen=True)
class Server:
    """What a job needs to trust a server: its socket, the pid that listens there, and the shared token."""

    address: str
    pid: int
    token: str

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, text: str | None) -> Server | None:
        try:
            fields = json.loads(text or "")
            return cls(str(fields["address"]), int(fields["pid"]), str(fields["token"]))
        except (ValueError, KeyError, TypeError):
            return None


def peer(connection: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket, from the kernel (``SO_PEERCRED``)."""
    pid, uid, _ = _CREDENTIALS.unpack(connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
    return pid, uid


# ----------------------------------------------------------------------------------------------
# The job's side


def plain(value: Any) -> Any:
    """Snakemake's path lists and strings as built-in types, so that a job's arguments travel as JSON."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def job_from_snakemake(smk: Any, stage: str) -> dict[str, Any]:
    """A stage's call as ``stages.run_job`` takes it: the job's named inputs, outputs and params."""
    kwargs = {**dict(smk.input.items()), **dict(smk.output.items()), **dict(smk.params.items())}
    return {"stage": stage, "log_file": str(smk.log[0]) if len(smk.log) else None,
            "threads": max(1, int(smk.threads)), "kwargs": plain(kwargs)}


def run_from_snakemake(smk: Any, stage: str) -> None:
    """Run ``stage`` (a rule's name, a key of ``stages.STAGES``) for a Snakemake job: warm where a server
    answers, else here."""
    job = job_from_snakemake(smk, stage)
    status = submit(job)
    if status is None:
        from influence_signals import stages  # only now: a warm job needs none of it in this process

        stages.run_job(**job)
    elif status:
        raise SystemExit(status)


def submit(job: Mapping[str, Any], server: Server | None = None) -> int | None:
    """Run ``job`` in a child of ``server`` (default: the one ``$INFLUENCE_SIGNALS_WARM`` names).

    Returns the child's exit status, or None when no server took the job (nothing has run then): none is
    named, none listens, or the listener is not that server (another pid or uid: sent nothing).
    """
    server = server or Server.decode(os.environ.get(ENV))
    if server is None or not os.path.exists(server.address):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(server.address)
        if peer(connection) != (server.pid, os.getuid()):
            connection.close()
            return None
        request = {"token": server.token, "job": plain(dict(job)), "python": list(_interpreter()), "cwd": os.getcwd(),
                   "env": dict(os.environ), "path": list(sys.path), "argv": list(sys.argv)}
        data = json.dumps(request).encode()
        message = _HEADER.pack(len(data)) + data
        sent = socket.send_fds(connection, [message], [0, 1, 2])
        connection.sendall(message[sent:])
        reply = _read_exactly(connection, _ACCEPTED.size)
    except OSError:
        connection.close()
        return None
    answer, child = _ACCEPTED.unpack(reply) if len(reply) == _ACCEPTED.size else (b"N", 0)
    if answer != b"Y":
        connection.close()
        return None

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:  # it has just ended: its status is on its way
            pass

    forwarded = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        status = _read_exactly(connection, 1)
    finally:
        for number, handler in forwarded.items():
            signal.signal(number, handler)
        connection.close()
    if not status:
        print(f"influence-signals: the job's warm process {child} ended without a status (killed?)", file=sys.stderr)
        return 1
    return status[0]


def _interpreter() -> tuple[str, str]:
    return os.path.realpath(sys.executable), os.path.realpath(sys.prefix)


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    """``size`` bytes, or fewer if the other side closed first."""
    data = b""
    while len(data) < size:
        part = connection.recv(size - len(data))
        if not part:
            break
        data += part
    return data


# ----------------------------------------------------------------------------------------------
# Snakemake's side: the server's life


def start(wait: float = 60.0) -> Server:
    """Launch a server for this process's jobs and point them at it (``$INFLUENCE_SIGNALS_WARM``).

    Its socket is ``sock`` in a new private directory. ``start`` waits up to ``wait`` seconds for it to
    listen: jobs started meanwhile would import the same libraries beside it, on the same cores, and run
    cold (after that, they do). It exits with ``stop``, or by itself once this process has gone; ``start``
    first removes directories that servers killed without cleaning up left behind.
    """
    global _server
    stop()
    sweep()
    folder = tempfile.mkdtemp(prefix=PREFIX)  # 0700, a name nobody can predict
    token = secrets.token_hex(32)
    _server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), folder, str(os.getpid())],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env={**os.environ, TOKEN_ENV: token})
    Path(folder, "pid").write_text(str(_server.pid))  # lets ``sweep`` tell a server still importing from a dead one
    server = Server(os.path.join(folder, "sock"), _server.pid, token)
    os.environ[ENV] = server.encode()
    deadline = time.monotonic() + wait
    while not os.path.exists(server.address) and _server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def ready(wait: float = 60.0) -> Server:
    """The server for this process's jobs: the one a launching process started and named in
    ``$INFLUENCE_SIGNALS_WARM`` (the debug command starts it with ``start(wait=0)`` before Snakemake, so that its
    imports run beside Snakemake's own start: about a second of every debug run), once it listens (up to ``wait``
    seconds); else a new one (``start``)."""
    inherited = Server.decode(os.environ.get(ENV))
    if inherited is None or not _alive(inherited.pid):
        return start(wait)
    deadline = time.monotonic() + wait
    while not os.path.exists(inherited.address) and _alive(inherited.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return inherited


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, as another user (a recycled pid)
        pass
    return True


def stop() -> None:
    """End the server (running children finish on their own) and stop pointing jobs at it."""
    global _server
    os.environ.pop(ENV, None)
    if _server is not None:
        _server.terminate()
        try:
            _server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _server.kill()
            _server.wait()
        _server = None


def sweep() -> list[str]:
    """Remove this user's server directories whose socket no longer answers (a server killed with SIGKILL)."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
            continue
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(folder / "sock"))
        except OSError:  # nothing listens: a dead server's socket, or none yet (a server still importing)
            if (folder / "sock").exists() or not _starting(folder, info.st_mtime):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
        finally:
            probe.close()
    return removed


STARTING_GRACE_S = 600.0  # a folder without socket or pid file younger than this is a server being started


def _starting(folder: Path, modified: float) -> bool:
    """Whether a folder without a socket belongs to a server still importing: its recorded pid lives, or (the
    moment between ``mkdtemp`` and the pid file) it is new. Sweeping such a folder made its run's jobs cold."""
    try:
        pid = int((folder / "pid").read_text())
    except (OSError, ValueError):
        return time.time() - modified < STARTING_GRACE_S
    return _alive(pid)


# ----------------------------------------------------------------------------------------------
# The server (this file run as a script)


def serve(folder: str, parent: int, token: str) -> None:
    """Import the heavy libraries, listen at ``folder/sock`` and fork a child per job while ``parent`` lives."""
    import importlib

    for name in PRELOADED:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if os.stat(folder).st_uid != os.getuid() or os.stat(folder).st_mode & 0o077:
        raise SystemExit(f"{folder} is not a private directory of this user")
    address = os.path.join(folder, "sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending = f"{address}.{os.getpid()}"
    listener.bind(pending)
    listener.listen(64)
    os.replace(pending, address)  # clients see the socket only once it answers
    stopping: list[int] = []  # a flag, not an exception: SIGTERM may land inside a library's at-fork hook
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    wake, woken = socket.socketpair()  # a signal writes to it, so select returns at once: ``stop`` waited up to 1 s
    for end in (wake, woken):
        end.setblocking(False)
    signal.set_wakeup_fd(wake.fileno())
    try:
        while os.getppid() == parent and not stopping:
            ready, _, _ = select.select([listener, woken], [], [], 1.0)
            _reap()
            if woken in ready:
                woken.recv(4096)
            if listener not in ready:
                continue
            connection, _ = listener.accept()
            if peer(connection)[1] != os.getuid():  # another user's process: read nothing, run nothing
                connection.close()
                continue
            if os.fork() == 0:  # the child never unwinds into this loop: its finally would remove the socket
                status = 1
                try:
                    listener.close()
                    signal.set_wakeup_fd(-1)
                    wake.close()
                    woken.close()
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    status = _child(connection, token)
                finally:
                    os._exit(status)
            connection.close()
    finally:
        listener.close()
        signal.set_wakeup_fd(-1)
        wake.close()
        woken.close()
        shutil.rmtree(folder, ignore_errors=True)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _request(connection: socket.socket, token: str) -> tuple[dict[str, Any], list[int]] | None:
    """The job's request and its three standard streams, or None (fds closed) when it is not one to run: too
    large, not JSON, without the server's token, from another interpreter or without its streams."""
    fds: list[int] = []
    try:
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header + _read_exactly(connection, _HEADER.size - len(header)))
        request = json.loads(_read_exactly(connection, size)) if size <= MAX_REQUEST else {}
        trusted = isinstance(request, dict) and hmac.compare_digest(str(request.get("token", "")).encode(), token.encode())
        if trusted and len(fds) == 3 and tuple(request.get("python", ())) == _interpreter():
            return request, fds
    except (OSError, ValueError, struct.error):
        pass
    for fd in fds:
        os.close(fd)
    return None


def _child(connection: socket.socket, token: str) -> int:
    """Become the job's process, run its stage and report the status; 1 for any failure. A request
    ``_request`` refuses is answered "N" and nothing of it is used."""
    accepted = _request(connection, token)
    if accepted is None:
        try:
            connection.sendall(_ACCEPTED.pack(b"N", 0))
        except OSError:
            pass
        return 0
    request, fds = accepted
    try:
        connection.sendall(_ACCEPTED.pack(b"Y", os.getpid()))
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        sys.argv[:] = request["argv"]
        threading.Thread(target=_exit_when_closed, args=(connection,), daemon=True).start()
        status = _run(request["job"])
    except BaseException:  # noqa: B036 - whatever happens, the client gets a status
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        connection.sendall(bytes([status]))
    except OSError:
        pass
    return status


def _run(job: Mapping[str, Any]) -> int:
    import threadpoolctl

    threadpoolctl.threadpool_limits(int(job["threads"]))  # the server loaded BLAS and OpenMP with all cores
    from influence_signals import stages

    stages.configure_logging(job["log_file"])
    stages.log.info("warm start: forked from the server (pid %d)", os.getppid())
    try:
        stages.run_job(**job)
    except Exception:  # run_job has logged it into the job's log
        traceback.print_exc()
        return 1
    return 0


def _exit_when_closed(connection: socket.socket) -> None:
    """End the job when its client goes (Snakemake cancelled it): nothing would wait for its outputs. As a
    SIGTERM, so that the job unwinds and removes its half-written outputs (``stages.run_job``)."""
    try:
        while connection.recv(1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    del sys.path[0]  # this file's folder: the package's modules must not import as top-level names
    serve(sys.argv[1], int(sys.argv[2]), os.environ.pop(TOKEN_ENV))
    os._exit(0)  # its socket and folder are gone; tearing down torch & co. kept ``stop`` waiting 0.5 s more
