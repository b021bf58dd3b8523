"""A REAL local SLURM cluster (munged + slurmctld + N emulated slurmd) on 127.0.0.1, without systemd.

For tests and demos of `carebot launch`: Debian's slurm packages are installed with apt-get when missing,
the config, state, logs and munge key live under one temporary prefix, daemons are started directly (they
daemonise and write PID files) and stopped by those PID files only. N nodes are `node[1-N]`, each slurmd on
its own free port; fake GPUs (gres backed by /dev/null links) let `sbatch --test-only` accept GPU layouts.
Gotchas (Slurm 22.05): emulated node names do not resolve (use NodeAddr); no slurmdbd, so no sacct."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = {"slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client", "munged": "munge"}


class ClusterUnavailable(RuntimeError):
    """The machine cannot host a local cluster (not root, no apt); the message says why."""


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def ensure_installed() -> None:
    """apt-get install the Debian slurm + munge packages that are missing (root only)."""
    need = sorted({pkg for exe, pkg in PACKAGES.items() if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists())})
    if not need:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"slurm packages missing ({', '.join(need)}) and not root: cannot apt-get install")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable(f"slurm packages missing ({', '.join(need)}) and no apt-get on this machine")
    policy = Path("/usr/sbin/policy-rc.d")  # keeps the packages' postinst from starting system daemons
    made = not policy.exists()
    if made:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need]):
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                raise ClusterUnavailable(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-1000:]}")
    finally:
        if made:
            policy.unlink(missing_ok=True)


def _alive(pidfile: Path, comm: str) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm and \
                Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            return pid
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class LocalCluster:
    nodes: int = 2
    cpus: int = 16  # advertised per node (may exceed the real cores: SlurmdParameters=config_overrides)
    gpus: int = 0  # fake gres/gpu per node
    prefix: Path | None = None
    env: dict = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.prefix / "etc" / "slurm.conf"

    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode:
            raise RuntimeError(f"{' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()}")
        return p

    # ------------------------------------------------------------------------------------------- start
    def start(self, timeout: float = 60) -> "LocalCluster":
        ensure_installed()
        if os.geteuid() != 0:
            raise ClusterUnavailable("slurmd and munged must be started as root")
        # /tmp, not a 0700 pytest dir: munged runs as `munge` and must reach its socket
        self.prefix = Path(self.prefix or tempfile.mkdtemp(prefix="carebot-slurm-"))
        for d in ("etc", "state", "spool", "log", "run", "munge", "dev"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        self.prefix.chmod(0o755)
        self.env = {"SLURM_CONF": str(self.conf)}
        sock = self._munge()
        self._write_conf(sock)
        subprocess.run(["/usr/sbin/slurmctld", "-f", str(self.conf)], check=True, env={**os.environ, **self.env})
        self._wait(timeout, "slurmctld", lambda: "is UP" in self.run("scontrol", "ping", check=False).stdout)
        for n in self.node_names:
            (self.prefix / "spool" / n).mkdir(exist_ok=True)
            subprocess.run(["/usr/sbin/slurmd", "-f", str(self.conf), "-N", n], check=True,
                           env={**os.environ, **self.env})
        self._wait(timeout, "idle nodes", self._all_idle)
        return self

    def _munge(self) -> Path:
        d = self.prefix / "munge"
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(d, "munge", "munge")
        d.chmod(0o755)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        sock = d / "munge.socket.2"
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={sock}", f"--key-file={key}",
                        f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
                        f"--seed-file={d / 'munged.seed'}"], check=True)
        self._wait(15, "munged", lambda: sock.exists())
        return sock

    def _write_conf(self, sock: Path) -> None:
        p = self.prefix
        ctld, *slurmd = _free_ports(1 + self.nodes)
        total = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]) // 1024
        mem = max(100, total * 9 // 10 // self.nodes)
        gres = ""
        if self.gpus:
            # gres/gpu needs File= char devices: /dev/null links (Count= alone registers 0 GPUs, node INVAL)
            for g in range(self.gpus):
                link = p / "dev" / f"nvidia{g}"
                link.unlink(missing_ok=True)
                link.symlink_to("/dev/null")
            files = f"{p}/dev/nvidia[0-{self.gpus - 1}]" if self.gpus > 1 else f"{p}/dev/nvidia0"
            (p / "etc" / "gres.conf").write_text(f"AutoDetect=off\nName=gpu File={files}\n")
            gres = f"Gres=gpu:{self.gpus}"
        nodes = "\n".join(f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs={self.cpus} "
                          f"RealMemory={mem} {gres} State=UNKNOWN" for n, port in zip(self.node_names, slurmd))
        self.conf.write_text(f"""# written by launch/local_cluster.py
ClusterName=carebot-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmctldPort={ctld}
SlurmdPort={slurmd[0]}
StateSaveLocation={p}/state
SlurmdSpoolDir={p}/spool/%n
SlurmctldPidFile={p}/run/slurmctld.pid
SlurmdPidFile={p}/run/slurmd-%n.pid
SlurmctldLogFile={p}/log/slurmctld.log
SlurmdLogFile={p}/log/slurmd-%n.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={p}/log/jobcomp.log
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MinJobAge=3600
KillWait=5
{'GresTypes=gpu' if self.gpus else ''}
{nodes}
PartitionName=debug Nodes=node[1-{self.nodes}] Default=YES MaxTime=INFINITE State=UP
""")

    def _all_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout.split("\n")
        states = [line.split()[1] for line in out if line.strip()]
        if any(s.startswith(("down", "drain")) for s in states):
            self.run("scontrol", "update", f"nodename=node[1-{self.nodes}]", "state=resume", check=False)
        return len(states) == self.nodes and all(s == "idle" for s in states)

    def _wait(self, timeout: float, what: str, ok) -> None:
        end = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > end:
                raise RuntimeError(f"local slurm: timed out waiting for {what} (logs under {self.prefix}/log)")
            time.sleep(0.2)

    # -------------------------------------------------------------------------------------------- jobs
    def job_state(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (kept for MinJobAge: there is no accounting database)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait_job(self, job_id: str, timeout: float = 300, poll: float = 0.5) -> dict[str, str]:
        """Poll (sbatch --wait backs off to 32 s here) until the job reaches a final state; returns it."""
        end = time.monotonic() + timeout
        while True:
            st = self.job_state(job_id)
            if st.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                return st
            if time.monotonic() > end:
                raise TimeoutError(f"job {job_id} still {st.get('JobState')} after {timeout}s")
            time.sleep(poll)

    # -------------------------------------------------------------------------------------------- stop
    def stop(self, purge: bool = True) -> None:
        if self.prefix is None:
            return
        run = self.prefix / "run"
        if _alive(run / "slurmctld.pid", "slurmctld"):
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                self._wait_quiet(lambda: not self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip(), 20)
        pidfiles = [(f, "slurmd") for f in sorted(run.glob("slurmd-*.pid"))]
        pidfiles += [(run / "slurmctld.pid", "slurmctld"), (self.prefix / "munge" / "munged.pid", "munged")]
        for f, comm in pidfiles:
            pid = _alive(f, comm)
            if pid:
                os.kill(pid, signal.SIGTERM)
                if not self._wait_quiet(lambda: _alive(f, comm) is None, 15):
                    os.kill(pid, signal.SIGKILL)
        if purge:
            shutil.rmtree(self.prefix, ignore_errors=True)

    @staticmethod
    def _wait_quiet(ok, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ok():
                return True
            time.sleep(0.2)
        return False
