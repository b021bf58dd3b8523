"""`carebot data curate --executor ray`: datatrove's RayPipelineExecutor, one stage after the other.

datatrove's Ray executor counts an application error in a task (a bad record) as "not retriable" and only logs it;
a stage chained with `depends=` then waits for the missing task forever (it polls every 2 minutes). So the stages
run here one by one, and a stage that ends with tasks incomplete is one error line: the task's own error when its
log holds a CareBot error (bad input, file:line), else which tasks did not complete and where their logs are. A
worker that dies (killed, out of memory, a lost node) is retried by datatrove itself (up to 3 times); what it had
written is rewritten by the retry, so nothing is lost or written twice.

Where Ray runs: an existing cluster when RAY_ADDRESS is set (`ray start --head` on one node, `ray start
--address=HEAD:6379` on the others, a shared filesystem for the output dir), else a local instance started here
(no dashboard, as many CPUs as the machine has, worker niceness 0 unless RAY_worker_niceness says otherwise: Ray's
default of 15 starves its workers on a loaded machine)."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from carebot.errors import ConfigError, InputError


def ray_executor(kw: dict, a: argparse.Namespace):
    """The RayPipelineExecutor of one stage: `a.workers` tasks at once, cpus and memory per task as for SLURM."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install ray==2.60.0)") from None
    from datatrove.executor import RayPipelineExecutor

    return RayPipelineExecutor(**kw, workers=a.workers, cpus_per_task=a.cpus_per_task, mem_per_cpu_gb=a.mem_per_cpu_gb)


def start() -> bool:
    """Connect to RAY_ADDRESS's cluster, or start a local instance; True when this process started Ray."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_worker_niceness", "0")  # read by the raylet this starts (a local instance only)
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", configure_logging=True)
    return True


_ERROR = re.compile(r"^\S*(?:InputError|BadInput|ConfigError|CareBotError): (.+)$")


def task_error(out: Path, stage: str, ranks: list[int]) -> InputError | None:
    """The first CareBot error line (bad input, file:line) the stage's incomplete tasks left in their logs."""
    for r in ranks:
        log = out / "logs" / stage / "logs" / f"task_{r:05d}.log"
        if log.is_file():
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _ERROR.match(line.strip())
                if m:
                    return InputError(m.group(1))
    return None


def run_stages(execs: list, out: Path) -> None:
    """Run each stage's executor in order; stop at the first stage with incomplete tasks: its bad input raised
    as the one InputError, any other failure left to the caller's "not finished" line (the logs say why)."""
    import ray

    from data_tools.curate.curate_report import STAGES

    started = start()
    try:
        for stage, ex in zip(STAGES, execs):
            ex.run()
            missing = list(ex.get_incomplete_ranks(range(ex.world_size)))
            if missing:
                err = task_error(out, stage, missing)
                if err is not None:
                    raise err
                print(f"[curate] stage {stage}: tasks {missing} did not complete on Ray", flush=True)
                return
    finally:
        if started:
            ray.shutdown()
