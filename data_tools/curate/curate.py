"""`carebot data curate`: the whole curation as ONE datatrove pipeline, run by datatrove's executors (local
tasks x workers, SLURM, Ray), resumable through their per-task completion markers only.

  carebot data curate --input corpus/ --out runs/curated --domain-model M1 --datarater-model M2 --tasks 8 --workers 2
  carebot data curate --config curate.yaml executor=slurm partition=cpu

Five datatrove stages (each task reads the same shard in every stage, so the MinHash indices line up):
  1. score   (tasks):  read -> rules + PII -> domain + DataRater -> decontam -> work/scored + near-dup signatures
  2. buckets (16):     near-dup candidate pairs per signature band (datatrove's MinhashDedupBuckets)
  3. cluster (1):      verified pairs -> clusters; each keeps its first document in corpus order (dedup.Cluster)
  4. hq cut  (1):      the medical_hq DataRater score per language (fixed, or the top fraction that survived)
  5. write   (tasks):  work/scored -> drop the near-dups -> bucket -> buckets/{medical,general,medical_hq}_{zh,en}/
Drops land in excluded/<step>/ with their reason; every step's counters in report.json / report.md / funnel.png.
A shard is one input file (datatrove's unit of work): split a big corpus into files to use many tasks.

Resume: rerun the same command. A stage's finished tasks are skipped (datatrove's `completions/`), an
unfinished one is redone from scratch and overwrites what it left. A changed input or option discards the whole
output dir's work (`curate.stamp.json`) and starts again, so nothing made from other inputs is reused.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.jsonl import JsonlWriter

from carebot.commit import fingerprints
from carebot.config import parse_command
from carebot.errors import InputError
from carebot.io import iter_jsonl, require_records, write_json
from carebot.text import record_text

from data_tools.curate.curate_report import STAGES, write_decontam_manifest, write_report


def flat(self, doc: Document) -> dict:
    """JsonlWriter adapter: output records as the single-process tools write them (steps.record)."""
    from data_tools.curate.steps import record

    return record(doc)


class CorpusReader(PipelineStep):
    """The input shards through the one JSONL reader (carebot.io): task `rank` reads files[rank::world_size]
    (sorted), each record's text by record_text (a record with no text field, or a non-string one, is an
    InputError naming file:line, as in every other data command), its other fields as metadata, and its
    corpus-order key `_order` (file index, line), which decides the kept document of a near-duplicate cluster.
    A record whose text is blank goes to `exclusion_writer` with reason `empty_text`."""

    name = "read"
    type = "reader"

    def __init__(self, files: list[str], exclusion_writer=None):
        super().__init__()
        self.files, self.exclusion_writer = files, exclusion_writer

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from contextlib import nullcontext

        with self.exclusion_writer if self.exclusion_writer else nullcontext() as excluded:
            for fi in range(rank, len(self.files), world_size):
                path = self.files[fi]
                for line, rec in iter_jsonl(path):
                    text = record_text(rec, f"{path}:{line}")
                    self.stat_update("docs")
                    meta = {k: v for k, v in rec.items() if k not in ("id", "text")}
                    meta["_order"] = [fi, line]
                    doc = Document(text=text, id=str(rec.get("id", f"{Path(path).name}:{line}")), metadata=meta)
                    if not text.strip():
                        self.stat_update("empty_text")
                        if excluded:
                            doc.metadata["filter_reason"] = "empty_text"
                            excluded.write(doc, rank)
                        continue
                    yield doc


class TaskFileReader(PipelineStep):
    """Stage 5 reads back exactly what stage 1's task `rank` wrote, in the same order."""

    name = "read scored"
    type = "reader"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from data_tools.curate.steps import scored_docs

        yield from scored_docs(self.folder, rank)


class Console:
    """sys.stderr while datatrove runs: its per-task log records (pipeline, stats, hundreds of lines a run; all of
    them stay in logs/<stage>/logs/task_NNNNN.log) are left out, but for the first line of a warning; an error
    reaches the console once, as the command's own `error:` line (the task's exception, raised here), with its
    trace in the task log. Anything else written (progress bars, our own lines) passes through. `--verbose`
    keeps everything."""

    # loguru's default format; 0.8 added the UTC offset after the time ("... 03:26:55.698 +00:00 | INFO ...")
    RECORD = re.compile(r"^(?:\[NODE -?\d+\] )?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+(?: [+-]\d\d:?\d\d)? \| (\w+) +\| [^-]*- ")

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> int:
        m = self.RECORD.match(s)
        if m is None:
            self.stream.write(s)
        elif m.group(1) == "WARNING":
            self.stream.write(f"[curate] {m.group(1).lower()}: {s[m.end():].splitlines()[0]}\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:  # no colour codes in what datatrove writes here
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


def pipelines(a: argparse.Namespace, files: list[str], out: Path) -> dict[str, list]:
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupFilter

    from data_tools.curate.dedup import Cluster, Signature, minhash_config
    from data_tools.curate.rules import RulesConfig
    from data_tools.curate.steps import Bucketer, DecontamFilter, EncoderHeads, HqCut, RulesFilter

    w = out / "work"
    cfg = minhash_config()

    def excluded(step: str) -> JsonlWriter:
        return JsonlWriter(str(out / "excluded" / step), compression=None, adapter=flat)

    score = [CorpusReader(files, exclusion_writer=excluded("read"))]
    if a.rules:
        score.append(RulesFilter(RulesConfig(min_units=a.min_units, pii=a.pii), exclusion_writer=excluded("rules")))
    score.append(EncoderHeads(a.domain_model, a.datarater_model, batch_size=a.batch_size))
    if a.decontam:
        score.append(DecontamFilter(exclusion_writer=excluded("decontam")))
    score += [JsonlWriter(str(w / "scored"), output_filename="${rank}.jsonl", compression=None),
              Signature(str(w / "sigs"), config=cfg)]
    return {
        "1_score": score,
        "2_buckets": [MinhashDedupBuckets(str(w / "sigs"), str(w / "pairs"), config=cfg)],
        "3_cluster": [Cluster(str(w / "pairs"), str(w / "sigs"), str(w / "remove"), config=cfg, threshold=a.threshold)],
        "4_hq_cut": [HqCut(str(w / "scored"), str(w / "remove"), str(w / "hq_cut.json"), a.tasks, a.hq_threshold,
                           a.hq_top_frac)],
        "5_write": [TaskFileReader(str(w / "scored")),
                    MinhashDedupFilter(str(w / "remove"), exclusion_writer=excluded("near_dup")),
                    Bucketer(str(w / "hq_cut.json")),
                    JsonlWriter(str(out / "buckets"), output_filename="${bucket}/${rank}.jsonl", compression=None,
                                adapter=flat)],
    }


def stage_tasks(a: argparse.Namespace) -> dict[str, int]:
    from data_tools.curate.dedup import BANDS

    return {"1_score": a.tasks, "2_buckets": BANDS, "3_cluster": 1, "4_hq_cut": 1, "5_write": a.tasks}


def finished(a: argparse.Namespace, out: Path) -> bool:
    """Every task of every stage has its datatrove completion marker."""
    return all(len(list((out / "logs" / s / "completions").glob("*"))) >= n for s, n in stage_tasks(a).items())


def executors(a: argparse.Namespace, steps: dict[str, list], out: Path) -> list:
    """One datatrove executor per stage, in order; local and SLURM ones depend on the one before (run the last),
    Ray ones do not (data_tools/curate/curate_ray.py runs them one by one)."""
    tasks = stage_tasks(a)
    prev, out_list = None, []
    for name in STAGES:
        kw = dict(pipeline=steps[name], tasks=tasks[name], logging_dir=str(out / "logs" / name),
                  depends=None if a.executor == "ray" else prev)
        if a.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            # K workers share the machine's cores: torch in each (the encoder) takes its share, not all of them
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // a.workers)))
            # fork, not datatrove's default forkserver: forked workers inherit carebot.procs' die-with-parent hook,
            # so a kill -9 of this command takes them with it instead of leaving them writing outputs
            prev = LocalPipelineExecutor(**kw, workers=min(a.workers, tasks[name]), start_method="fork")
        elif a.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            prev = SlurmPipelineExecutor(**kw, workers=a.workers, time=a.time, partition=a.partition,
                                         job_name=job_name(out, name), cpus_per_task=a.cpus_per_task,
                                         mem_per_cpu_gb=a.mem_per_cpu_gb, env_command=a.env_command,
                                         slurm_logs_folder=str(out / "logs" / name / "slurm"))
        else:
            from data_tools.curate.curate_ray import ray_executor

            prev = ray_executor(kw, a)
        out_list.append(prev)
    return out_list


def job_name(out: Path, stage: str) -> str:
    """A stage's SLURM job name, unique to its output dir: a rerun finds the jobs an earlier run submitted."""
    import hashlib

    return f"curate-{stage}-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]}"


def slurm_jobs_clear(out: Path) -> bool:
    """Before submitting: False while jobs an earlier run submitted for `out` are running or can still run (a
    second submission would run the same tasks twice, and rewrite the rank lists those jobs read). Jobs that can
    never run (a task they wait on with afterok failed, e.g. killed) are cancelled, so resubmitting replaces them."""
    import subprocess

    names = ",".join(job_name(out, s) for s in STAGES)
    q = subprocess.run(["squeue", "-h", "-n", names, "-o", "%A|%T|%r"], capture_output=True, text=True)
    if q.returncode:
        raise InputError(f"squeue failed: {(q.stderr or q.stdout).strip()}")
    jobs = {tuple(line.split("|")) for line in q.stdout.split()}  # (array job id, state, reason)
    # the stages chain with afterok: once one job can never start, neither can any other waiting on a dependency
    broken = any(r == "DependencyNeverSatisfied" for _, _, r in jobs)
    stale = sorted({i for i, st, r in jobs
                    if broken and st == "PENDING" and r in ("Dependency", "DependencyNeverSatisfied")})
    live = sorted({i for i, _, _ in jobs} - set(stale))
    if live:
        print(f"[curate] jobs {' '.join(live)} of {out} are still queued or running: rerun once they end",
              file=sys.stderr)
        return False
    if stale:
        print(f"[curate] cancelling jobs {' '.join(stale)}: they wait on a task that failed; resubmitting",
              file=sys.stderr)
        subprocess.run(["scancel", *stale], check=True)
    return True


def stamp(a: argparse.Namespace, files: list[str], old: dict | None) -> dict:
    """What the output dir's work was made from: options, and the content (sha256) of every input and model
    file; a file whose stat (size, mtime, ctime, inode) is unchanged since `old` keeps its recorded hash, so
    only a changed or new file is read for it."""
    old = old if isinstance(old, dict) else {}
    opts = {k: v for k, v in vars(a).items() if k not in ("out", "executor", "workers", "partition", "time",
                                                          "env_command", "config", "progress", "verbose",
                                                          "allow_empty")}
    models = {k: fingerprints([p for p in sorted(Path(v).iterdir()) if p.is_file()], old.get("models", {}).get(k))
              for k, v in (("domain", a.domain_model), ("datarater", a.datarater_model)) if v}
    return {"inputs": fingerprints(files, old.get("inputs")), "options": opts, "models": models}


def same_stamp(a: dict, b: dict | None) -> bool:
    """Two stamps describe the same work: equal but for the files' stat keys (a copy or a touch is no change)."""
    from carebot.commit import content_only

    return isinstance(b, dict) and content_only(a) == content_only(b)


WORK = ("work", "buckets", "excluded")  # what a run writes besides logs/


def discard(out: Path, logs: bool = True) -> None:
    """Remove a run's outputs from `out` (with logs=False the task logs stay, for their traces, but not the
    completion markers that would make a rerun skip work that is gone)."""
    for d in WORK + (("logs",) if logs else ()):
        shutil.rmtree(out / d, ignore_errors=True)
    for d in (out / "logs").glob("*/completions"):
        shutil.rmtree(d, ignore_errors=True)
    for f in ("report.json", "report.md", "funnel.png", "decontam_manifest.json", "curate.stamp.json"):
        (out / f).unlink(missing_ok=True)


def input_files(paths: list[str]) -> list[str]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(x for x in p.rglob("*.jsonl") if x.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    if not files:
        raise InputError(f"no .jsonl files in {', '.join(paths)}")
    return [str(f.resolve()) for f in sorted(set(files))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="carebot data curate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, help="JSONL shards or folders of them")
    ap.add_argument("--out", required=True)
    ap.add_argument("--executor", choices=["local", "slurm", "ray"], default="local")
    ap.add_argument("--tasks", type=int, default=1, help="tasks of stages 1 and 4 (one shard file each at most)")
    ap.add_argument("--workers", type=int, default=1, help="tasks run at once (local), array limit (slurm)")
    ap.add_argument("--rules", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--min-units", type=int, default=50, help="rules: fewest zh chars + en words")
    ap.add_argument("--pii", choices=["redact", "drop", "keep"], default="redact")
    ap.add_argument("--domain-model", help="`carebot data domain train` output (none: every doc is general)")
    ap.add_argument("--datarater-model", help="`carebot data datarater train` output")
    ap.add_argument("--batch-size", type=int, default=64, help="encoder batch")
    ap.add_argument("--decontam", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threshold", type=float, default=0.8, help="near-dup Jaccard (as `carebot data dedup`)")
    ap.add_argument("--hq-threshold", type=float, default=4.0, help="DataRater score of medical_hq")
    ap.add_argument("--hq-top-frac", type=float, default=None,
                    help="instead: the top fraction of surviving medical docs per language is medical_hq")
    ap.add_argument("--partition", default="cpu")
    ap.add_argument("--time", default="04:00:00")
    ap.add_argument("--cpus-per-task", type=int, default=1)
    ap.add_argument("--mem-per-cpu-gb", type=int, default=2, help="slurm: memory per CPU (whole GB)")
    ap.add_argument("--env-command", default=None, help="slurm: run before each task (e.g. `source venv/bin/activate`)")
    ap.add_argument("--verbose", action="store_true", help="datatrove's task logs on stderr too (always in logs/)")
    ap.add_argument("--allow-empty", action="store_true", help="inputs with no records are not an error")
    a = parse_command(ap, argv)
    if a.tasks < 1 or a.workers < 1:
        raise InputError("--tasks and --workers must be >= 1")
    files = input_files(a.input)
    require_records(files, a.allow_empty)
    out = Path(a.out)
    sp = out / "curate.stamp.json"
    try:
        old = json.loads(sp.read_text()) if sp.is_file() else None
    except ValueError:
        old = None
    st = stamp(a, files, old)
    same = same_stamp(st, old)
    if a.executor == "slurm" and not (same and finished(a, out)) and not slurm_jobs_clear(out):
        return 0
    if not same and any((out / d).exists() for d in WORK + ("logs",)):
        why = "made from other inputs or options" if old else "holds work no stamp vouches for"
        print(f"[curate] {out}: {why}; discarding its work and starting again", file=sys.stderr)
        discard(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(sp, st)
    if not finished(a, out):
        from loguru import logger

        stderr = sys.stderr
        sys.stderr = stderr if a.verbose else Console(stderr)  # datatrove's task loggers bind it when each task starts
        logger.remove()
        logger.add(sys.stderr)  # and this process's own records
        print(f"[curate] {a.executor}: {len(STAGES)} stages, task logs in {out / 'logs'}/<stage>/logs/", file=stderr)
        try:
            execs = executors(a, pipelines(a, files, out), out)
            if a.executor == "ray":
                from data_tools.curate.curate_ray import run_stages

                run_stages(execs, out)
            else:
                execs[-1].run()
        except InputError:  # bad input: nothing made from it is kept (the rerun starts over, once it is fixed)
            discard(out, logs=False)
            raise
        finally:
            sys.stderr = stderr
            logger.remove()
            logger.add(stderr)
    if not finished(a, out):
        where = "submitted" if a.executor == "slurm" else "not finished (see logs/*/logs)"
        print(f"[curate] {where}: rerun the same command to resume it, or to write the report once it is done",
              file=sys.stderr)
        return 0 if a.executor == "slurm" else 1
    rep = write_report(out)
    if a.decontam:
        write_decontam_manifest(out)
    print(json.dumps(rep["funnel"]))
    return 0


if __name__ == "__main__":
    from carebot.cli import script

    script(main, "carebot data curate")
