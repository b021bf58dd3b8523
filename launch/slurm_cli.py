"""`carebot launch`: sbatch scripts rendered from a stage's recipe, submitted alone or as the whole chain.

  carebot launch render stable --config stable_cpt.yaml [overrides]   # print the script
  carebot launch submit sft --config sft.yaml --partition gpu          # sbatch it (--test-only: check only)
  carebot launch pipeline --partition gpu                               # stable -> boost -> convert -> sft ->
                                                                        #   dpo -> convert -> eval, afterok
  carebot launch data rules --shards a.jsonl b.jsonl -- --input {shard} --out runs/rules/{name}"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from carebot.cli import script
from launch.pipeline import PIPELINE, STAGES, StageSpec, checkpoint_dir, plan
from launch.slurm import (Rendered, SlurmConfig, after_run, render_array, render_task, render_train, sbatch,
                          unfinished, write_script)
from carebot.errors import ConfigError


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
    steps = plan(a.stages.split(","))
    recipes = dict(kv.split("=", 1) for kv in a.recipe)
    sets: dict[str, list[str]] = {}
    for kv in a.set:
        stage, _, over = kv.partition(":")
        sets.setdefault(stage, []).append(over)
    out: dict[int, Rendered] = {}  # step index -> what it rendered (its output_dir, config)
    job, rendered = None, []
    for step in steps:
        stage, spec, src = step.stage, step.spec, out.get(step.source) if step.source is not None else None
        s = _slurm_config(a, spec)
        layout = dict(kv.split("=", 1) for kv in a.layout).get(stage)
        if layout:  # NODESxGPUS
            n, g = layout.lower().split("x")
            s = replace(s, nodes=int(n), gpus_per_node=int(g))
        name = f"{a.name_prefix}{step.index}-{stage}"
        if spec.trains:
            over = list(sets.get(stage, []))
            if src is not None and not any(o.startswith("checkpoint.init_from=") for o in over):
                over.insert(0, f"checkpoint.init_from={checkpoint_dir(src.output_dir, src.cfg.checkpoint.keep_best)}")
            r = render_train([recipes.get(stage, spec.recipe)], over, s, name)
        elif stage == "convert":
            r = render_task(["convert", "megatron-to-hf", "--megatron", str(Path(src.output_dir) / "checkpoints"),
                             "--out", str(Path(src.output_dir) / "hf"), *sets.get(stage, [])], s, name)
            r.output_dir = str(Path(src.output_dir) / "hf")
        else:  # eval: the converted model (or the training run's hf/ when no convert came before)
            model = src.output_dir if src.cfg is None else str(Path(src.output_dir) / "hf")
            r = render_task(["eval", "mcq", "--model", model, "--out", str(Path(a.eval_out)), *sets.get(stage, [])],
                            s, name)
        out[step.index] = r
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


if __name__ == "__main__":
    script(main, "carebot launch")
