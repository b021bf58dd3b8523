"""`carebot launch`: sbatch scripts rendered from a stage's recipe, submitted alone or as the whole chain.

  carebot launch render stable --config stable_cpt.yaml [overrides]   # print the script
  carebot launch submit sft --config sft.yaml --partition gpu          # sbatch it (--test-only: check only)
  carebot launch pipeline --partition gpu                               # stable -> boost -> convert -> sft ->
                                                                        #   dpo -> convert -> eval, afterok
  carebot launch data rules --shards a.jsonl b.jsonl -- --input {shard} --out runs/rules/{name}

Training stages run one srun task per node, each a torchrun (`--node-rank $SLURM_NODEID`, master = the first
node's address); `--requeue --signal=USR1@<sec>`: the trainer checkpoints and exits at the end of its step, and
the job requeues itself if it stopped before its last step (`after-run`). Layouts default to the paper's
(CareBot Sec. 3 / App. C): CPT on 3 nodes x 8 GPUs, SFT and DPO on 8 GPUs."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from pretrain.config import ConfigError, RunConfig, load_config

TEMPLATES = Path(__file__).parent / "templates"
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


@dataclass(frozen=True)
class StageSpec:
    """A pipeline stage: a carebot command and its default recipe and layout."""
    command: str
    recipe: str | None
    nodes: int
    gpus_per_node: int
    time: str


# The paper's layouts; convert and eval are single-task jobs.
STAGES: dict[str, StageSpec] = {
    "stable": StageSpec("pretrain", "stable_cpt.yaml", 3, 8, "7-00:00:00"),
    "boost": StageSpec("pretrain", "boost_cpt.yaml", 3, 8, "3-00:00:00"),
    "sft": StageSpec("sft", "sft.yaml", 1, 8, "2-00:00:00"),
    "dpo": StageSpec("dpo", "dpo.yaml", 1, 8, "1-00:00:00"),
    "convert": StageSpec("convert", None, 1, 0, "04:00:00"),
    "eval": StageSpec("eval", None, 1, 1, "12:00:00"),
}
PIPELINE = ["stable", "boost", "convert", "sft", "dpo", "convert", "eval"]


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
        raise RuntimeError(f"sbatch refused {script}: {p.stderr.strip() or p.stdout.strip()}")
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


# ---------------------------------------------------------------------------------------------- CLI
def _slurm_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("SLURM")
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--procs-per-node", type=int, help="torchrun workers per node (default: GPUs, 1 on CPU)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem")
    g.add_argument("--time")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--exclusive", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--job-name")
    g.add_argument("--log-dir", default="logs/slurm")
    g.add_argument("--workdir", default=os.getcwd(), help="job working directory (default: here)")
    g.add_argument("--python", default="python", help="interpreter inside the job")
    g.add_argument("--env-setup", action="append", default=[], help="shell line run first (repeatable), e.g. "
                   "'source .venv/bin/activate'")
    g.add_argument("--container-image", help="pyxis/enroot image for srun (adds --container-image)")
    g.add_argument("--srun-args", default="")
    g.add_argument("--signal-seconds", type=int, default=600, help="USR1 this many seconds before the time limit")
    g.add_argument("--no-requeue", dest="requeue", action="store_false")
    g.add_argument("--sbatch-arg", action="append", default=[], help="raw sbatch option, e.g. --constraint=a100")


def _slurm_config(a: argparse.Namespace, spec: StageSpec | None = None) -> SlurmConfig:
    srun = a.srun_args + (f" --container-image={a.container_image} --container-workdir={a.workdir}"
                          if a.container_image else "")
    s = SlurmConfig(nodes=spec.nodes if spec else 1, gpus_per_node=spec.gpus_per_node if spec else 0,
                    time=spec.time if spec else "1-00:00:00", log_dir=a.log_dir, workdir=a.workdir, python=a.python,
                    env_setup=a.env_setup, srun_args=srun.strip(), signal_seconds=a.signal_seconds,
                    requeue=a.requeue, extra_sbatch=a.sbatch_arg)
    for k in ("nodes", "gpus_per_node", "procs_per_node", "cpus_per_task", "mem", "time", "partition", "account",
              "qos", "exclusive", "job_name"):
        if getattr(a, k, None) is not None:
            s = replace(s, **{k: getattr(a, k)})
    return s


def _render_stage(stage: str, configs: list[str] | None, args: list[str], s: SlurmConfig,
                  name: str | None = None) -> Rendered:
    spec = STAGES[stage]
    if spec.recipe is not None:
        return render_train(configs or [spec.recipe], args, s, name)
    if not args:
        raise ConfigError(f"{stage}: give the command's arguments after --, e.g. "
                          f"`carebot launch submit {stage} -- {'megatron-to-hf --megatron X --out Y' if stage == 'convert' else 'mcq --model X --out Y'}`")
    return render_task([spec.command, *args], s, name or stage)


def _pipeline(a: argparse.Namespace) -> int:
    stages = a.stages.split(",")
    bad = [x for x in stages if x not in STAGES]
    if bad:
        raise ConfigError(f"--stages: unknown stage(s) {', '.join(bad)} (known: {', '.join(STAGES)})")
    recipes = dict(kv.split("=", 1) for kv in a.recipe)
    sets: dict[str, list[str]] = {}
    for kv in a.set:
        stage, _, over = kv.partition(":")
        sets.setdefault(stage, []).append(over)
    prev_train: Rendered | None = None
    last_hf: str | None = None
    job, rendered = None, []
    for i, stage in enumerate(stages):
        spec = STAGES[stage]
        s = _slurm_config(a, spec)
        layout = dict(kv.split("=", 1) for kv in a.layout).get(stage)
        if layout:  # NODESxGPUS
            n, g = layout.lower().split("x")
            s = replace(s, nodes=int(n), gpus_per_node=int(g))
        name = f"{a.name_prefix}{i}-{stage}"
        if spec.recipe is not None:
            over = list(sets.get(stage, []))
            if prev_train is not None and not any(o.startswith("checkpoint.init_from=") for o in over):
                src = Path(prev_train.output_dir) / ("best" if prev_train.cfg.checkpoint.keep_best else "checkpoints")
                over.insert(0, f"checkpoint.init_from={src}")  # chain each stage from the one before
            r = render_train([recipes.get(stage, spec.recipe)], over, s, name)
            prev_train = r
        elif stage == "convert":
            if prev_train is None:
                raise ConfigError("pipeline: convert needs a training stage before it")
            last_hf = str(Path(prev_train.output_dir) / "hf")
            r = render_task(["convert", "megatron-to-hf", "--megatron", str(Path(prev_train.output_dir) / "checkpoints"),
                             "--out", last_hf, *sets.get(stage, [])], s, name)
        else:  # eval
            model = last_hf or (str(Path(prev_train.output_dir) / "hf") if prev_train else None)
            if model is None:
                raise ConfigError("pipeline: eval needs a converted model before it")
            r = render_task(["eval", "mcq", "--model", model, "--out", str(Path(a.eval_out)), *sets.get(stage, [])],
                            s, name)
        path = write_script(r, s, a.script_dir)
        if a.dry_run:
            print(f"{name}: {path}")
            continue
        if a.test_only:
            print(f"{name}: {sbatch(path, test_only=True)}")
            continue
        job = sbatch(path, f"afterok:{job}" if job else None)
        rendered.append((name, job))
        print(f"{name}: job {job}" + (f" (after {rendered[-2][1]})" if len(rendered) > 1 else ""), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for verb in ("render", "submit"):
        p = sub.add_parser(verb, help=f"{verb} one stage's job")
        p.add_argument("stage", choices=list(STAGES))
        p.add_argument("--config", nargs="+", help="recipe YAML(s) (default: the stage's paper recipe)")
        p.add_argument("args", nargs="*", help="training stages: dotted overrides; convert/eval: the command's args")
        p.add_argument("-o", "--output", help="write the script here (render; default: stdout)")
        if verb == "submit":
            p.add_argument("--dependency", help="e.g. afterok:123")
            p.add_argument("--test-only", action="store_true", help="sbatch --test-only: validate, do not queue")
        _slurm_args(p)
    p = sub.add_parser("pipeline", help="submit stable -> boost -> convert -> sft -> dpo -> convert -> eval")
    p.add_argument("--stages", default=",".join(PIPELINE))
    p.add_argument("--recipe", action="append", default=[], metavar="STAGE=YAML")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE",
                   help="override for one stage (training: dotted config key; convert/eval: an extra argument)")
    p.add_argument("--layout", action="append", default=[], metavar="STAGE=NODESxGPUS")
    p.add_argument("--eval-out", default="runs/eval/carebot")
    p.add_argument("--name-prefix", default="carebot-")
    p.add_argument("--script-dir", help="where the rendered scripts go (default: --log-dir)")
    p.add_argument("--dry-run", action="store_true", help="render the scripts only")
    p.add_argument("--test-only", action="store_true", help="sbatch --test-only every script")
    _slurm_args(p)
    p = sub.add_parser("data", help="a data tool as a job array over shards")
    p.add_argument("tool")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--max-parallel", type=int, help="array throttle (%%N)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("args", nargs="*", help="the tool's arguments (after --), with {shard} {name} {task}")
    _slurm_args(p)
    p = sub.add_parser("after-run", help=argparse.SUPPRESS)  # used inside the rendered training scripts
    p.add_argument("--output-dir", required=True)
    p.add_argument("--before", required=True)
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--max-requeues", type=int, default=20)
    argv = list(sys.argv[1:] if argv is None else argv)
    tail = argv[argv.index("--") + 1:] if "--" in argv else []  # the tool's own args, passed through verbatim
    a = ap.parse_args(argv[:len(argv) - len(tail) - (1 if "--" in argv else 0)])
    if hasattr(a, "args"):
        a.args = list(a.args) + tail
    try:
        if a.cmd == "after-run":
            return after_run(a.output_dir, a.before, a.rc, int(os.environ.get("SLURM_RESTART_COUNT", 0)),
                             a.max_requeues)
        if a.cmd == "pipeline":
            return _pipeline(a)
        if a.cmd == "data":
            s = _slurm_config(a)
            name = a.job_name or f"data-{a.tool}"
            todo = unfinished(s, name, len(a.shards))
            if not todo:
                print(f"{name}: all {len(a.shards)} shard(s) done")
                return 0
            r = render_array(a.tool, a.shards, a.args, s, name, todo, a.max_parallel)
            path = write_script(r, s)
            print(f"{name}: {path}" if a.dry_run else f"{name}: array job {sbatch(path)} ({len(todo)} shard(s))")
            return 0
        s = _slurm_config(a, STAGES[a.stage])
        r = _render_stage(a.stage, a.config, a.args, s, a.job_name)
        if a.cmd == "render":
            if a.output:
                Path(a.output).write_text(r.script)
            else:
                sys.stdout.write(r.script)
            return 0
        path = write_script(r, s)
        print(sbatch(path, a.dependency, a.test_only) if a.test_only else f"{r.name}: job {sbatch(path, a.dependency)}")
        return 0
    except (ConfigError, RuntimeError, FileNotFoundError) as e:
        print(f"carebot launch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
