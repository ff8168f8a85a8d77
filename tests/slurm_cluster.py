"""A real one-node Slurm for tests: Debian's slurmctld, slurmd and munge, started from a temporary config.

    with one_node_slurm(tmp_path) as env: ...   # env: os.environ + SLURM_CONF; sbatch/squeue/scancel work

Installs the packages with apt when they are missing (CI runs as root and reaches Debian's mirrors), writes a
slurm.conf for this machine (the node line from `slurmd -C`: hostname, CPUs, memory), with no cgroup
plugins (proctrack/linuxproc, task/none: a container has no cgroup delegation) and no accounting database
(tood.engine.executor reads job states with scontrol, not sacct), starts munged (if none runs), slurmctld
and slurmd on free ports, waits until `sinfo` shows the node idle, and stops what it started at the end.
Raises Unavailable with the reason where the machine cannot run the daemons (not root, apt unreachable).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "munged")


class Unavailable(RuntimeError):
    """This machine cannot run a test Slurm; the message says why."""


def install() -> None:
    if all(shutil.which(b) for b in BINARIES):
        return
    if os.geteuid() != 0:
        raise Unavailable(f"Slurm is not installed and installing {PACKAGES} with apt needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
        if proc.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed (apt unreachable?): {proc.stderr.strip()[-500:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(folder: Path) -> Path:
    node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    host = node.split()[0].removeprefix("NodeName=")
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=toodtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
{node.split(" UpTime=")[0]} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    return conf


def _munge_works() -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cred = subprocess.run(["munge", "-n"], capture_output=True, check=True, timeout=10).stdout
        subprocess.run(["unmunge"], input=cred, capture_output=True, check=True, timeout=10)
        return True
    return False


def start_munge() -> subprocess.Popen | None:
    """munged as the munge user (None when one already answers)."""
    if _munge_works():
        return None
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], check=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    for folder in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    proc = subprocess.Popen(
        ["runuser", "-u", "munge", "--", "munged", "--foreground"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _wait(_munge_works, 20, "munged did not answer")
    return proc


def _wait(ready, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise Unavailable(what)
        time.sleep(0.5)


@contextlib.contextmanager
def one_node_slurm(folder: Path) -> Iterator[dict]:
    install()
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root to start jobs as their user")
    conf = write_conf(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started = [p for p in [start_munge()] if p is not None]
    try:
        for daemon in (["slurmctld", "-D", "-c"], ["slurmd", "-D"]):
            log = (folder / f"{daemon[0]}.out").open("w")
            started.append(subprocess.Popen([*daemon, "-f", str(conf)], env=env, stdout=log, stderr=log))

        def idle() -> bool:
            out = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], check=False, env=env, capture_output=True, text=True
            ).stdout
            return out.strip() == "idle"

        try:
            _wait(idle, 60, "the node did not become idle")
        except Unavailable as e:
            logs = "\n".join(p.read_text()[-1500:] for p in folder.glob("slurm*.log"))
            raise Unavailable(f"{e}; daemon logs:\n{logs}") from None
        yield env
    finally:
        for proc in reversed(started):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
