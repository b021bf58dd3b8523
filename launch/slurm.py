"""SLURM jobs for every stage: sbatch scripts rendered from a stage's recipe (`launch/templates/`), submitted
with dependencies, and the requeue decision a training job makes when it stops (`after_run`). The command
line is `launch.slurm_cli` (`carebot launch`).

Training stages run one srun task per node, each a torchrun (`--node-rank $SLURM_NODEID`, master = the first
node's address); `--requeue --signal=USR1@<sec>`: the trainer checkpoints and exits at the end of its step, and
the job requeues itself if it stopped before its last step (`after-run`). Layouts default to the paper's
(CareBot Sec. 3 / App. C): CPT on 3 nodes x 8 GPUs, SFT and DPO on 8 GPUs."""
from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from carebot.errors import CareBotError, ConfigError
from carebot.run_config import RunConfig, load_config

TEMPLATES = Path(__file__).parent / "templates"


class SlurmError(CareBotError, RuntimeError):
    """SLURM refused a job (the message quotes sbatch)."""
TRAIN_COMMANDS = {"cpt": "pretrain", "sft": "sft", "dpo": "dpo"}  # RunConfig.stage -> carebot command


@dataclass(kw_only=True)
class SlurmConfig:
    """Where and how a job runs. Defaults: the paper's layout for the stage (see STAGES)."""
    nodes: int = 1
    gpus_per_node: int = 0  # gres/gpu per node; 0 = CPU job
    procs_per_node: int | None = None  # torchrun workers per node (default: gpus_per_node, or 1 on CPU)
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str = "1-00:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    exclusive: bool | None = None  # default: exclusive when the job uses GPUs
    job_name: str | None = None
    log_dir: str = "logs/slurm"
    workdir: str = "."
    python: str = "python"
    env_setup: list[str] = field(default_factory=list)  # lines run first (module load, venv activate...)
    srun_args: str = ""  # e.g. pyxis: --container-image=IMG --container-mounts=/data:/data
    signal_seconds: int = 600  # USR1 this long before the time limit; also torchrun's shutdown grace
    requeue: bool = True
    max_requeues: int = 20
    omp_threads: int = 1
    extra_sbatch: list[str] = field(default_factory=list)  # raw `--flag=value`s

    @property
    def procs(self) -> int:
        return self.procs_per_node or self.gpus_per_node or 1




@dataclass
class Rendered:
    name: str
    script: str
    output_dir: str | None = None
    cfg: RunConfig | None = None


# --------------------------------------------------------------------------------------------- render
def _fill(template: str, values: dict[str, object]) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder {{{{{m.group(1)}}}}} has no value")
        return str(values[m.group(1)])
    return re.sub(r"{{(\w+)}}", sub, template)


def _sbatch_lines(s: SlurmConfig, name: str, *, array: str | None = None) -> str:
    opts = [f"--job-name={name}", f"--nodes={s.nodes}", "--ntasks-per-node=1", f"--time={s.time}",
            f"--output={s.log_dir}/%x-{'%A_%a' if array else '%j'}.out", "--open-mode=append"]
    if s.gpus_per_node:
        opts.append(f"--gres=gpu:{s.gpus_per_node}")
    for flag, val in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                      ("cpus-per-task", s.cpus_per_task), ("mem", s.mem), ("array", array)):
        if val:
            opts.append(f"--{flag}={val}")
    if s.exclusive or (s.exclusive is None and s.gpus_per_node):
        opts.append("--exclusive")
    opts += s.extra_sbatch
    return "\n".join(f"#SBATCH {o}" for o in opts)


def _common(s: SlurmConfig, name: str, title: str, command: list[str], extra_env: list[str]) -> dict:
    return {"title": title, "env_setup": "\n".join(s.env_setup), "workdir": shlex.quote(s.workdir),
            "omp_threads": s.omp_threads, "extra_env": "\n".join(extra_env), "srun_args": s.srun_args,
            "python": s.python, "command": shlex.join(command), "source": title}


def time_seconds(t: str) -> int:
    """SLURM --time (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds."""
    days, _, rest = t.rpartition("-") if "-" in t else ("0", "", t)
    parts = [int(x) for x in rest.split(":")]
    if "-" in t:
        h, m, sec = (parts + [0, 0])[:3]
    else:
        h, m, sec = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    return ((int(days) * 24 + h) * 60 + m) * 60 + sec


def check_layout(cfg: RunConfig, s: SlurmConfig) -> int:
    """The data-parallel size this layout gives; a ConfigError if the recipe cannot run on it."""
    world = s.nodes * s.procs
    mp = cfg.parallel.tensor * cfg.parallel.pipeline
    if world % mp:
        raise ConfigError(f"{s.nodes} node(s) x {s.procs} process(es) = {world} is not a multiple of "
                          f"TP {cfg.parallel.tensor} x PP {cfg.parallel.pipeline}")
    dp = world // mp
    t = cfg.train
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(f"global_batch_size {t.global_batch_size} is not divisible by micro_batch_size "
                          f"{t.micro_batch_size} x data-parallel size {dp} ({s.nodes}x{s.procs} GPUs)")
    return dp


def render_train(configs: list[str], overrides: list[str], s: SlurmConfig, name: str | None = None) -> Rendered:
    """A torchrun-per-node training job for a CPT / SFT / DPO recipe."""
    cfg = load_config(configs, overrides)
    command = TRAIN_COMMANDS.get(cfg.stage)
    if command is None:
        raise ConfigError(f"recipe stage '{cfg.stage}' is not a training stage ({', '.join(TRAIN_COMMANDS)})")
    dp = check_layout(cfg, s)
    if s.requeue and s.signal_seconds >= time_seconds(s.time):
        raise ConfigError(f"--signal-seconds {s.signal_seconds} is not below the time limit {s.time}: the job "
                          "would be told to stop as it starts")
    name = name or s.job_name or cfg.name
    # The trainer resolves relative paths from the job's working directory: so does the requeue check.
    env = ["export CUDA_DEVICE_MAX_CONNECTIONS=1  # TP>1: keep TP comm/compute overlap ordered"] \
        if cfg.parallel.tensor > 1 else []
    # overrides before --config: `pretrain --config` takes several YAMLs and would swallow them
    title = (f"{cfg.stage} '{cfg.name}' on {s.nodes} node(s) x {s.procs} = TP{cfg.parallel.tensor} x "
             f"PP{cfg.parallel.pipeline} x DP{dp}")
    vals = _common(s, name, title, [command, *overrides, "--config", *configs], env)
    sb = _sbatch_lines(s, name)
    if s.requeue:
        sb += f"\n#SBATCH --requeue\n#SBATCH --signal=USR1@{s.signal_seconds}"
    vals.update(sbatch=sb, source=", ".join(configs), procs_per_node=s.procs, output_dir=shlex.quote(cfg.output_dir),
                shutdown_timeout=s.signal_seconds, max_requeues=s.max_requeues)
    return Rendered(name, _fill((TEMPLATES / "train.sbatch").read_text(), vals), cfg.output_dir, cfg)


def render_task(command: list[str], s: SlurmConfig, name: str) -> Rendered:
    """A one-task job (convert, eval)."""
    s = replace(s, nodes=1)
    vals = _common(s, name, f"carebot {shlex.join(command)}", command, [])
    vals["sbatch"] = _sbatch_lines(s, name)
    return Rendered(name, _fill((TEMPLATES / "task.sbatch").read_text(), vals))


def _bash_word(arg: str) -> str:
    """Quote one argument, turning {shard} {name} {task} into the array task's shell variables."""
    parts = re.split(r"({shard}|{name}|{task})", arg)
    var = {"{shard}": '"${SHARD}"', "{name}": '"${NAME}"', "{task}": '"${TASK}"'}
    return "".join(var.get(p) or (shlex.quote(p) if p else "") for p in parts) or "''"


def render_array(tool: str, shards: list[str], args: list[str], s: SlurmConfig, name: str | None = None,
                 todo: list[int] | None = None, parallel: int | None = None) -> Rendered:
    """One array task per shard running `carebot data <tool> args`, with {shard}/{name}/{task} filled in."""
    if not shards:
        raise ConfigError("--shards: no input shards given")
    name = name or s.job_name or f"data-{tool}"
    s = replace(s, nodes=1)
    todo = list(range(len(shards))) if todo is None else todo
    array = ",".join(map(str, todo)) + (f"%{parallel}" if parallel else "")
    vals = _common(s, name, f"carebot data {tool} over {len(shards)} shard(s)", [], [])
    vals.update(sbatch=_sbatch_lines(s, name, array=array), shards=" ".join(shlex.quote(x) for x in shards),
                done_dir=shlex.quote(done_dir(s, name)), command=" ".join([shlex.quote(tool)] + [_bash_word(a) for a in args]))
    return Rendered(name, _fill((TEMPLATES / "array.sbatch").read_text(), vals))


def done_dir(s: SlurmConfig, name: str) -> str:
    return str(Path(s.log_dir) / f"{name}.done")


def unfinished(s: SlurmConfig, name: str, n: int) -> list[int]:
    d = Path(s.workdir) / done_dir(s, name)
    return [i for i in range(n) if not (d / str(i)).exists()]


# --------------------------------------------------------------------------------------------- submit
def write_script(r: Rendered, s: SlurmConfig, script_dir: str | None = None) -> Path:
    d = Path(script_dir or Path(s.workdir) / s.log_dir)
    d.mkdir(parents=True, exist_ok=True)
    (Path(s.workdir) / s.log_dir).mkdir(parents=True, exist_ok=True)  # sbatch does not create --output's dir
    path = d / f"{r.name}.sbatch"
    tmp = path.with_suffix(".sbatch.tmp")
    tmp.write_text(r.script)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def sbatch(script: Path, dependency: str | None = None, test_only: bool = False) -> str:
    """Submit; returns the job id (or, with test_only, sbatch's verdict line). Raises on refusal."""
    cmd = ["sbatch", "--parsable"] + ([f"--dependency={dependency}"] if dependency else [])
    cmd += ["--test-only"] if test_only else []
    p = subprocess.run(cmd + [str(script)], capture_output=True, text=True)
    if p.returncode:
        raise SlurmError(f"sbatch refused {script}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stderr.strip() if test_only else p.stdout.strip().split(";")[0]


# ------------------------------------------------------------------------------------------ after-run
def after_run(output_dir: str, before: str, rc: int, restarts: int, max_requeues: int) -> int:
    """0: finished or stopped on purpose; 3: requeue (stopped early after saving progress); 1: failed."""
    out = Path(output_dir)
    latest = (out / "checkpoints" / "latest")
    after = latest.read_text().strip() if latest.exists() else "none"
    try:
        cfg = load_config([str(out / "config.yaml")]) if (out / "config.yaml").exists() else None
    except ConfigError:
        cfg = None
    step = int(after.split("_")[-1]) if after.startswith("iter_") else -1
    finished = cfg is not None and step >= cfg.train.train_steps
    deliberate = cfg is not None and cfg.train.exit_after_steps is not None
    print(f"[carebot-launch] exit {rc}; checkpoint {before} -> {after}; "
          f"{'finished' if finished else 'not finished'}; restarts {restarts}", flush=True)
    if finished or (rc == 0 and (deliberate or after == before)):
        return 0 if rc == 0 or finished else 1
    if after != before and not deliberate and restarts < max_requeues:
        return 3
    return 1
