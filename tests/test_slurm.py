"""The workflow on a real SLURM cluster: one node on this machine (Debian's slurm-wlm and munge), the `.test/`
config through profiles/slurm, and the same config run locally; both runs write the same results.

The module fixture starts munged (a fresh key), slurmctld and slurmd from a slurm.conf written into a temporary
folder (tests/slurm/slurm.conf.in: this host, 2 CPUs, its measured memory, one partition `cpu`), waits until
`sinfo` shows the node idle, and stops them all afterwards. Without slurmdbd, `sacct --completion` reads the
records that jobcomp/filetxt writes. What cannot start (no root, no apt-get to install the packages, a daemon that
does not come up) skips the module with one line saying what.

One path lies outside the temporary folder: /run/slurm/conf, a link to it. snakemake's slurm-jobstep executor
drops SLURM_CONF from a job's environment before its `srun`, so the job's srun finds the configuration where a
configless compute node keeps it (SLURM reads /etc/slurm/slurm.conf first: a machine that has one is skipped).

The test profile is profiles/slurm/config.yaml with what one node lacks replaced: the gpu partition and GPUs,
memory above the node's share per CPU, threads above its CPUs. It also names the status command (squeue: sacct
needs slurmdbd) and a short first status check. The local run gets the same threads: a result computed on two
threads differs in the last bits from one computed on one.
"""
from __future__ import annotations

import csv
import filecmp
import getpass
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

from test_pipeline import TINY, snakemake, write_config

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).parent / "slurm" / "slurm.conf.in"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
CPUS = 2
PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "sacct", "scancel", "srun")
RUN_CONF = Path("/run/slurm/conf")  # where a configless slurmd caches slurm.conf; SLURM's clients look there
SACCT_FIELDS = "JobID,JobName,Partition,NCPUS,State,ExitCode,Start,End,Elapsed,NodeList"
DEADLINE = 900  # seconds: a SLURM run still going then has its jobs cancelled (it takes about 2 minutes)

pytestmark = pytest.mark.pipeline


def skip(what: str, detail: str = "") -> NoReturn:
    last = detail.strip().splitlines()[-1] if detail.strip() else ""
    pytest.skip(f"SLURM: {what}" + (f" ({last[:200]})" if last else ""))


def ensure_packages() -> None:
    """Debian's slurm-wlm and munge, installed with apt-get (as root) where they are missing; .ci/run installs
    them first."""
    if all(shutil.which(binary) for binary in BINARIES):
        return
    if shutil.which("apt-get") is None:
        skip(f"{' and '.join(PACKAGES)} are not installed and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    try:
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:  # no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
            result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        skip(f"apt-get install {' '.join(PACKAGES)} took over 15 minutes")
    missing = [binary for binary in BINARIES if shutil.which(binary) is None]
    if result.returncode != 0 or missing:
        skip(f"apt-get install {' '.join(PACKAGES)} failed", result.stdout + result.stderr)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pid_of(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a daemon that exited but was not reaped yet is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def stop(pid: int | None, wait: float = 10.0) -> None:
    if pid is None or not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    until = time.monotonic() + wait
    while alive(pid) and time.monotonic() < until:
        time.sleep(0.1)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Cluster:
    folder: Path
    host: str
    memory: int  # MB, as slurmd measures it
    env: dict[str, str]  # for SLURM's clients: SLURM_CONF

    def command(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(args, capture_output=True, text=True, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def sacct(self, jobs: list[str]) -> list[str]:
        """`sacct` lines (parsable, with a header) of these jobs, from the job-completion records."""
        out = self.command("sacct", "--completion", "--parsable2", f"--format={SACCT_FIELDS}")
        header, *lines = out.strip().splitlines()
        return [header, *(line for line in lines if line.split("|")[0] in jobs)]

    def cancel_all(self) -> None:
        self.command("scancel", "--user", getpass.getuser(), check=False)

    def log_tail(self, n: int = 15) -> str:
        return "\n".join(f"{name}: " + "\n".join(
            (self.folder / name).read_text(errors="replace").splitlines()[-n:]) for name in ("slurmctld.log", "slurmd.log")
            if (self.folder / name).exists())


def start_cluster(folder: Path) -> Cluster:
    """munged, slurmctld and slurmd for a one-node cluster whose every file lies in ``folder``."""
    host = socket.gethostname().split(".")[0]
    for sub in ("munge", "spool", "state"):
        (folder / sub).mkdir(mode=0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    munge = [f"--key-file={key}", f"--socket={folder}/munge/munge.socket", f"--pid-file={folder}/munge/munged.pid",
             f"--log-file={folder}/munge/munged.log", f"--seed-file={folder}/munge/munged.seed"]
    result = subprocess.run(["munged", "--force", *munge], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        skip("munged did not start", result.stderr)
    measured = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"RealMemory=(\d+)", measured)
    if found is None:
        skip("slurmd -C did not report this machine's memory", measured)
    memory = int(found.group(1))
    conf = string.Template(TEMPLATE.read_text()).substitute(
        host=host, ctld_port=free_port(), d_port=free_port(), user=getpass.getuser(),
        munge_socket=f"{folder}/munge/munge.socket", folder=folder, cpus=CPUS, memory=memory)
    (folder / "slurm.conf").write_text(conf)
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    cluster = Cluster(folder, host, memory, env)
    for daemon in (["slurmctld", "-c"], ["slurmd"]):  # -c: no state from an earlier cluster
        result = subprocess.run(daemon, capture_output=True, text=True, env=env, timeout=60)
        if result.returncode != 0:
            skip(f"{daemon[0]} did not start", result.stderr + cluster.log_tail(1))
    until = time.monotonic() + 60
    state = ""
    while time.monotonic() < until:
        state = cluster.command("sinfo", "--noheader", "--Node", "--format=%T", check=False).strip()
        if state == "idle":
            return cluster
        time.sleep(0.5)
    skip(f"the node is '{state or 'unknown'}', not idle, after 60 s", cluster.log_tail(1))


def stop_daemons(folder: Path) -> None:
    """slurmd, slurmctld and munged of the cluster in ``folder``, each by its pid file (those that started)."""
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
        stop(pid_of(folder / pid_file))


def remove_killed_cluster() -> None:
    """The link and folder of this test's cluster left by a run that was killed (its slurmctld is gone): left in
    place, every SLURM client here (and the SLURM executor plugin's import-time `scontrol show config`, so every
    Snakemake start) waits 9 s for a controller that is not there, and this test would skip."""
    if not RUN_CONF.is_symlink():
        return
    folder = Path(os.readlink(RUN_CONF))
    controller = pid_of(folder / "slurmctld.pid")
    if folder.name.startswith("influence-signals-slurm-") and (controller is None or not alive(controller)):
        stop_daemons(folder)
        RUN_CONF.unlink()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        skip("not root (slurmd must run as root)")
    ensure_packages()
    if Path("/etc/slurm/slurm.conf").exists():
        skip("/etc/slurm/slurm.conf exists: a job's srun would read it instead of this test's cluster")
    if RUN_CONF.is_symlink() and not RUN_CONF.exists():
        RUN_CONF.unlink()  # left by a test run that was killed
    remove_killed_cluster()
    if RUN_CONF.exists() or RUN_CONF.is_symlink():
        skip(f"{RUN_CONF} exists: a configless slurmd runs here")
    folder = Path(tempfile.mkdtemp(prefix="influence-signals-slurm-"))  # 0700: it holds the munge key
    started = None
    try:
        RUN_CONF.parent.mkdir(parents=True, exist_ok=True)
        RUN_CONF.symlink_to(folder)
        started = start_cluster(folder)
        yield started
    finally:
        if started is not None:
            started.cancel_all()
        stop_daemons(folder)
        if RUN_CONF.is_symlink() and os.readlink(RUN_CONF) == str(folder):
            RUN_CONF.unlink()
        shutil.rmtree(folder, ignore_errors=True)


def scaled_profile(cluster: Cluster, folder: Path) -> tuple[Path, dict[str, int]]:
    """profiles/slurm/config.yaml scaled to the one node; returns the folder and its threads per rule."""
    profile = yaml.safe_load(PROFILE.read_text())
    share = cluster.memory // CPUS
    for resources in [profile["default-resources"], *profile["set-resources"].values()]:
        if resources.get("slurm_partition") == "gpu":
            resources["slurm_partition"] = "cpu"
        resources.pop("gpu", None)
        if "mem_mb" in resources:
            resources["mem_mb"] = min(resources["mem_mb"], share)
    threads = {rule: min(n, CPUS) for rule, n in profile["set-threads"].items()}
    profile["set-threads"] = threads
    profile.update({"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2,
                    "slurm-no-account": True, "slurm-keep-successful-logs": True})
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder, threads


@dataclass
class Runs:
    slurm: Path
    local: Path
    output: str  # the SLURM run's Snakemake output
    jobs: dict[str, str]  # SLURM job id -> rule
    sacct: list[str]
    cpus: dict[str, int]  # rule -> CPUs its jobs got
    seconds: dict[str, float]
    summary: str


def benchmark_table(folder: Path) -> str:
    """Per rule: jobs, the longest wall time and the largest max_rss of its `benchmark:` files."""
    costs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in sorted((folder / "results" / "benchmarks").rglob("*.tsv")):
        rule = path.relative_to(folder / "results" / "benchmarks").parts[0].removesuffix(".tsv")
        for row in csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"):
            rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else float("nan")
            costs[rule].append((float(row["s"]), rss))
    lines = [f"{'rule':<16}{'jobs':>5}{'max s':>9}{'max_rss MB':>12}"]
    lines += [f"{rule:<16}{len(c):>5}{max(s for s, _ in c):>9.1f}{max(r for _, r in c):>12.0f}"
              for rule, c in sorted(costs.items())]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory) -> Runs:
    base = tmp_path_factory.mktemp("slurm_runs")
    profile, threads = scaled_profile(cluster, base / "profile")
    slurm, local = base / "slurm", base / "local"
    for folder in (slurm, local):
        folder.mkdir()
        write_config(folder, TINY)
    seconds: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])  # for sbatch, squeue and scancel; jobs inherit it
        patch.setenv("SOURCE_DATE_EPOCH", "0")  # summary.pdf's creation date: the same in both runs
        watchdog = threading.Timer(DEADLINE, cluster.cancel_all)
        watchdog.start()
        began = time.monotonic()
        try:
            result = snakemake(slurm, "--profile", str(profile), check=False)
        finally:
            watchdog.cancel()
        seconds["slurm"] = time.monotonic() - began
        output = result.stdout + result.stderr
        submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*?/rule_(\w+)/", output)
        jobs = dict(submitted)
        sacct = cluster.sacct(list(jobs))
        if result.returncode != 0:
            raise AssertionError(f"the SLURM run failed:\n{output[-4000:]}\nsacct:\n" + "\n".join(sacct)
                                 + "\n" + cluster.log_tail())
        began = time.monotonic()
        snakemake(local, "--cores", str(CPUS), "--set-threads", *(f"{rule}={n}" for rule, n in threads.items()))
        seconds["local"] = time.monotonic() - began
    cpus: dict[str, int] = {}
    for line in sacct[1:]:
        fields = dict(zip(SACCT_FIELDS.split(","), line.split("|")))
        cpus[jobs[fields["JobID"]]] = max(cpus.get(jobs[fields["JobID"]], 0), int(fields["NCPUS"]))
    summary = "\n".join([
        f"SLURM test cluster: node {cluster.host}, {CPUS} CPUs, RealMemory={cluster.memory} MB, partition cpu",
        f"submitted {len(jobs)} jobs: " + ", ".join(f"{job} ({rule})" for job, rule in jobs.items()),
        "sacct --completion:", *sacct,
        f"SLURM run {seconds['slurm']:.0f} s, local run (--cores {CPUS}) {seconds['local']:.0f} s",
        "per-rule costs of the SLURM run's benchmark: files (no warm starts there):", benchmark_table(slurm),
    ])
    (base / "summary.txt").write_text(summary + "\n")
    return Runs(slurm, local, output, jobs, sacct, cpus, seconds, summary + f"\n(also in {base / 'summary.txt'})")


def test_every_job_ran_on_the_cluster_and_completed(runs, capsys):
    with capsys.disabled():  # shown under -q too: the job ids and sacct lines in CI's output
        print("\n" + runs.summary)
    planned = {"prepare": 5, "inject": 3, "pretrain": 1, "train": 3, "signals": 3, "aggregate": 1}
    counts = {rule: list(runs.jobs.values()).count(rule) for rule in set(runs.jobs.values())}
    assert counts == planned, runs.summary  # every job but `all` (a local rule) went through sbatch
    rows = [dict(zip(SACCT_FIELDS.split(","), line.split("|"))) for line in runs.sacct[1:]]
    assert sorted(row["JobID"] for row in rows) == sorted(runs.jobs), runs.summary
    assert all(row["State"] == "COMPLETED" and row["ExitCode"] == "0:0" and row["Partition"] == "cpu"
               for row in rows), runs.summary  # no failed first attempt that a retry hid


def test_each_job_gets_as_many_cpus_as_its_threads(runs):
    """The profile's set-threads reach SLURM: no cpus_per_task default overrides them."""
    threads = yaml.safe_load(PROFILE.read_text())["set-threads"]
    for rule, cpus in runs.cpus.items():
        assert cpus == min(threads.get(rule, 1), CPUS), f"{rule}: {cpus} CPUs\n{runs.summary}"


def test_no_job_ran_in_a_warm_server(runs):
    """The profile turns warm starts off: on this one node the jobs would otherwise run in the submitting
    process's warm server, outside their allocation (the local run may use one: its results are the same)."""
    forked = [log for log in (runs.slurm / "results/logs").rglob("*.log") if "warm start: forked" in log.read_text()]
    assert forked == [], forked


def checkpoint(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    state["metrics"].pop("seconds")
    return state


def same_checkpoint(a: Path, b: Path) -> bool:
    import torch

    def equal(x, y) -> bool:
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        return type(x) is type(y) and x == y

    return equal(checkpoint(a), checkpoint(b))


def manifest_without_hashes(path: Path) -> dict:
    """A checkpoint manifest with each file's hash checked against the file and then left out."""
    manifest = json.loads(path.read_text())
    for entry in manifest["checkpoints"]:
        assert hashlib.sha256((path.parent / entry["file"]).read_bytes()).hexdigest() == entry.pop("sha256"), path
    return manifest


def without_seconds(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(io.StringIO(path.read_text()))]


TIMED = {  # files that hold a wall time, compared without it
    ".pt": same_checkpoint,  # metrics["seconds"]: the epoch's wall time
    "manifest.json": lambda a, b: manifest_without_hashes(a) == manifest_without_hashes(b),  # hashes of the .pt
    "history.csv": lambda a, b: without_seconds(a) == without_seconds(b),  # the seconds column
}


def test_results_are_the_same_as_a_local_run(runs, capsys):
    """Every result file, byte for byte; the three kinds that record a wall time, without it. Logs and
    benchmark files hold times and host details, not results."""
    def results(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in (folder / "results").rglob("*") if p.is_file()
                and p.relative_to(folder / "results").parts[0] not in ("logs", "benchmarks")}

    files = results(runs.local)
    assert files == results(runs.slurm)
    assert len(files) > 80 and any(f.endswith(".pt") for f in files)
    different, timed = [], 0
    for name in sorted(files):
        a, b = runs.local / name, runs.slurm / name
        if filecmp.cmp(a, b, shallow=False):
            continue
        compare = next((c for suffix, c in TIMED.items() if name.endswith(suffix)), None)
        if compare is not None and compare(a, b):
            timed += 1
            continue
        different.append(name)
    assert different == [], f"differ between the SLURM and the local run: {different}"
    with capsys.disabled():
        print(f"\nSLURM vs local results: {len(files) - timed} files identical byte for byte, {timed} identical "
              f"but for their wall time ({', '.join(TIMED)})")
