"""`carebot data curate`: the curation as one datatrove pipeline on real data (samples/ or ../shared/data), cut
into 8 shards. The same buckets whatever the task layout; near-duplicates found across shards; kill -9 and
rerun gives the same bytes; the encoder step cuts a 50 MB document before tokenizing it."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, read_jsonl

SOURCES = {"dialogue/medquad_en_sample.jsonl": ("medical", ("question", "answer")),
           "dialogue/toyhom_internal_medicine_qa.jsonl": ("medical", ("question", "answer")),
           "general/wikitext2_paragraphs_en.jsonl": ("general", ("text",)),
           "general/cmrc2018_wiki_paragraphs_zh.jsonl": ("general", ("text",))}


def corpus(data_root: Path, per_file: int = 150) -> list[dict]:
    rows = []
    for rel, (_, keys) in SOURCES.items():
        for i, r in enumerate(read_jsonl(data_root / rel, per_file)):
            rows.append({"id": f"{Path(rel).stem}-{i}", "text": "\n".join(str(r[k]) for k in keys), "source": rel})
    random.Random(0).shuffle(rows)
    return rows


def write_shards(rows: list[dict], d: Path, n: int = 8) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for s in range(n):
        with (d / f"shard{s}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[s::n])
    return d


def curate(inp: Path, out: Path, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "carebot.cli", "data", "curate", "--input", str(inp), "--out", str(out), *args]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert p.returncode == 0, p.stderr[-4000:]
    return p


def buckets(out: Path) -> dict[str, list[str]]:
    """{bucket: its records as sorted JSON lines} (the set of documents, whatever the files)."""
    return {b.name: sorted(line for f in b.glob("*.jsonl") for line in f.read_text(encoding="utf-8").splitlines())
            for b in sorted((out / "buckets").iterdir())}


@pytest.fixture(scope="module")
def models(tmp_path_factory, data_root) -> list[str]:
    """A domain classifier and a DataRater trained (frozen offline e5-small + head) on labelled real docs."""
    from data_tools.curate import datarater, domain
    from data_tools.curate.encoder import EncoderConfig, HeadConfig

    d = tmp_path_factory.mktemp("models")
    rows = corpus(data_root, 60)
    texts = [r["text"] for r in rows]
    dom = [SOURCES[r["source"]][0] for r in rows]
    enc = EncoderConfig(max_length=64)
    domain.train(texts, dom, d / "domain", enc, HeadConfig())
    datarater.train(texts, [4.5 if x == "medical" and len(t) > 400 else 2.0 for x, t in zip(dom, texts)],
                    d / "datarater", enc, HeadConfig())
    return ["--domain-model", str(d / "domain"), "--datarater-model", str(d / "datarater")]


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_same_buckets_from_one_task_and_four_tasks_two_workers(tmp_path, data_root, models):
    inp = write_shards(corpus(data_root), tmp_path / "in")
    curate(inp, tmp_path / "one", *models, "--tasks", "1", "--hq-top-frac", "0.4")
    curate(inp, tmp_path / "four", *models, "--tasks", "4", "--workers", "2", "--hq-top-frac", "0.4")
    one, four = buckets(tmp_path / "one"), buckets(tmp_path / "four")
    assert {k: len(v) for k, v in one.items()} == {k: len(v) for k, v in four.items()}
    assert one == four
    assert {"medical_en", "medical_zh", "general_en", "general_zh"} <= set(one), list(one)
    rep = json.loads((tmp_path / "four" / "report.json").read_text())
    assert rep["funnel"]["input"] == 600 and sum(rep["buckets"].values()) == sum(len(v) for v in four.values())
    assert (tmp_path / "four" / "funnel.png").stat().st_size > 1000 and "| bucket |" in (tmp_path / "four" / "report.md").read_text()
    # the records feed `carebot data tokenize` as they are: text plus the annotations at top level
    rec = json.loads(four["medical_en"][0])
    assert {"id", "text", "domain", "domain_prob", "quality", "lang", "bucket"} <= set(rec) and rec["domain"] == "medical"
    # medical_hq = the top 40% of each language's surviving medical docs: what `carebot data bucket` makes of them
    from data_tools.curate.bucket import bucketize

    survivors = [json.loads(x) for v in four.values() for x in v]
    m = bucketize(survivors, tmp_path / "bucket", hq_top_frac=0.4)
    assert {k: v["docs"] for k, v in m["buckets"].items()} == {k: len(v) for k, v in four.items()}
    assert {"medical_hq_en", "medical_hq_zh"} <= set(four) and rep["medical_hq_cut"]["cuts"] == m["hq_threshold"]


def near_copy(text: str, rng: random.Random) -> str:
    """~10% of the units changed: the last 9% cut (a partial copy, as crawls hold), 1% replaced in one place (zh
    characters or en words). On 300+ units that is Jaccard ~0.88 over 5-gram shingles; spread-out edits would
    break 5 shingles per changed word (0.9^5: 10% of words -> Jaccard ~0.4, not a near-duplicate at 0.8)."""
    zh = sum("\u4e00" <= c <= "\u9fff" for c in text) > len(text) / 3
    us = list(text) if zh else text.split()
    n = len(us)
    us = us[: int(n * 0.91)]
    at, k = rng.randrange(len(us) // 4, len(us) // 2), max(1, n // 100)
    us[at : at + k] = ["变"] * k if zh else ["changed"] * k
    return ("" if zh else " ").join(us)


def test_near_duplicates_across_shards_lose_exactly_one_member(tmp_path, data_root, capsys):
    from data_tools.curate.decontam import norm_units
    from data_tools.curate.dedup import DedupConfig, dedup

    rows = corpus(data_root)
    rng = random.Random(1)
    long = [r for r in rows if len(norm_units(r["text"])) >= 300][:16]
    assert len(long) == 16
    n = 8
    base = write_shards(rows, tmp_path / "base", n)
    planted = {}
    for i, r in enumerate(long):  # the copy goes to a shard other than its original's
        src = next(s for s in range(n) if r in rows[s::n])
        copy = {"id": f"planted-{i}", "text": near_copy(r["text"], rng), "source": "planted"}
        with (base / f"shard{(src + 1 + i % (n - 1)) % n}.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(copy, ensure_ascii=False) + "\n")
        planted[copy["id"]] = r["id"]
    curate(base, tmp_path / "out", "--tasks", "8", "--workers", "2", "--no-decontam")
    removed = [json.loads(x)["id"] for f in (tmp_path / "out" / "excluded" / "near_dup").glob("*.jsonl")
               for x in f.read_text(encoding="utf-8").splitlines()]
    for copy, orig in planted.items():
        assert (copy in removed) + (orig in removed) == 1, (copy, orig)
    unplanted = [x for x in removed if x not in planted and x not in planted.values()]
    # today's single-process dedup on the same documents (what survives the rules), in corpus order
    kept_by_rules = sorted(
        (json.loads(x) for f in (tmp_path / "out" / "work" / "scored").glob("*.jsonl") for x in f.read_text().splitlines()),
        key=lambda r: r["metadata"]["_order"])
    _, today = dedup([{"id": r["id"], "text": r["text"]} for r in kept_by_rules if not r["id"].startswith("planted")],
                     DedupConfig(), progress=False)
    with capsys.disabled():
        print(f"\n[near-dup] planted pairs {len(planted)} (each lost one member); unplanted removed: pipeline "
              f"{len(unplanted)}, today's dedup {len(today)}")
    assert len(unplanted) <= len(today)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_kill_9_anywhere_then_rerun_gives_the_same_bytes(tmp_path, data_root):
    inp = write_shards(corpus(data_root, 100), tmp_path / "in")
    args = ["--tasks", "4", "--workers", "2"]
    t0 = time.monotonic()
    curate(inp, tmp_path / "clean", *args)
    clean_s = time.monotonic() - t0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "carebot.cli", "data", "curate", "--input", str(inp), "--out", str(out), *args]
    rng, kills = random.Random(0), 0
    for _ in range(5):  # each run picks up where the killed one left off
        p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(1.0, max(1.5, 0.5 * clean_s)))  # within the first half of a whole run
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)  # the command only: its worker processes must die with it
            kills += 1
        p.wait()
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "worker processes outlived the killed command"
            time.sleep(0.2)
    assert kills >= 3, kills
    curate(inp, out, *args)
    files = sorted(f.relative_to(tmp_path / "clean") for f in (tmp_path / "clean" / "buckets").rglob("*.jsonl"))
    assert files == sorted(f.relative_to(out) for f in (out / "buckets").rglob("*.jsonl"))
    for f in files + sorted(f.relative_to(tmp_path / "clean") for f in (tmp_path / "clean" / "excluded").rglob("*.jsonl")):
        assert (tmp_path / "clean" / f).read_bytes() == (out / f).read_bytes(), f
    assert json.loads((out / "report.json").read_text())["funnel"] == json.loads((tmp_path / "clean" / "report.json").read_text())["funnel"]


def test_changed_option_discards_the_old_work(tmp_path, data_root):
    inp = write_shards(corpus(data_root, 40), tmp_path / "in", 2)
    curate(inp, tmp_path / "o", "--no-decontam")
    p = curate(inp, tmp_path / "o", "--no-decontam", "--threshold", "0.9")
    assert "made from other inputs or options" in p.stderr


def test_decontam_manifest_is_the_decontam_tools(tmp_path, data_root):
    """Eval items planted in the corpus: curate drops them and lists the items hit in `decontam_manifest.json`,
    as `carebot data decontam` does on the same documents (what eval's contamination guard reads)."""
    from eval.contamination import overlaps

    rows = corpus(data_root, 20)
    items = read_jsonl(data_root / "benchmarks" / "medqa_usmle_4opt_test.jsonl", 3)
    rows += [{"id": f"leak-{i}", "text": "Notes from a review course.\n" + it["question"] + "\n" + " ".join(
        it["options"].values() if isinstance(it["options"], dict) else it["options"])} for i, it in enumerate(items)]
    inp = write_shards(rows, tmp_path / "in", 2)
    curate(inp, tmp_path / "o", "--tasks", "2")
    ours = json.loads((tmp_path / "o" / "decontam_manifest.json").read_text())
    assert sorted(r["id"] for r in ours["removed"]) == ["leak-0", "leak-1", "leak-2"]
    assert set(ours["benchmarks"]["medqa"]["overlapping_items"]) >= {it["id"] for it in items}
    p = subprocess.run([sys.executable, "-m", "carebot.cli", "data", "decontam", "--input", *sorted(map(str, inp.glob("*"))),
                        "--out", str(tmp_path / "tool"), "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    tool = json.loads((tmp_path / "tool" / "manifest.json").read_text())
    assert ours["benchmarks"] == tool["benchmarks"] and overlaps(tmp_path / "o" / "decontam_manifest.json")["medqa"] >= 3


def test_a_cut_short_shard_is_one_line_and_the_log_keeps_the_trace(tmp_path, data_root):
    inp = write_shards(corpus(data_root, 10), tmp_path / "in", 2)
    with (inp / "shard1.jsonl").open("a") as f:
        f.write('{"id": "x", "text": "cut sho')  # a copy that stopped mid-record
    p = curate(inp, tmp_path / "o", "--tasks", "2", check=False)
    assert p.returncode == 2 and "shard1.jsonl:21: not valid JSON" in p.stderr.splitlines()[-1], p.stderr[-2000:]
    noise = [x for x in p.stderr.splitlines() if not x.startswith(("  ", "[carebot data curate] config"))]
    assert len(noise) <= 4, noise  # no task logs, no traceback: datatrove's records stay in its log files
    assert "Traceback" in "".join(f.read_text() for f in (tmp_path / "o" / "logs" / "1_score" / "logs").glob("*.log"))
    assert not (tmp_path / "o" / "buckets").exists()


ENCODER_50MB = r"""
import resource, sys, time
from datatrove.data import Document
from data_tools.curate.steps import EncoderHeads
step = EncoderHeads(sys.argv[1], sys.argv[2])
small = [Document(text="发热咳嗽三天，伴有胸痛。", id="s")]
list(step.run(iter(small)))  # encoder loaded and warm
text = ("患者男性，五十岁，反复胸痛三年。 The patient reports chest pain on exertion. " * 900_000)[: 50 * 2**20]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
out = list(step.run(iter([Document(text=text, id="big")])))
dt = time.perf_counter() - t
grow = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(f"SECONDS {dt:.2f} GROW_MB {grow / 2**20:.0f} DOMAIN {out[0].metadata['domain']}")
assert dt < 5 and grow < 2**30, (dt, grow)
"""


def test_encoder_step_cuts_a_50mb_document_before_tokenizing(models, capsys):
    p = subprocess.run([sys.executable, "-c", ENCODER_50MB, models[1], models[3]], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "SECONDS" in p.stdout, p.stdout + p.stderr[-3000:]
    with capsys.disabled():
        print(f"\n[encoder step, 50 MB document] {p.stdout.strip()}")


def test_bad_record_with_two_workers_is_one_line_and_leaves_no_outputs(tmp_path, data_root):
    """A record with no text field, found by one of 4 tasks on 2 workers: exit 2, ONE `error:` line naming
    file:line (it used to be printed twice), no bucket / excluded / work file left, and once the input is fixed
    a rerun starts over and finishes."""
    inp = write_shards(corpus(data_root, 8), tmp_path / "in", 4)
    good = (inp / "shard2.jsonl").read_text(encoding="utf-8")
    (inp / "shard2.jsonl").write_text(good + '{"id": "x", "body": "no text field"}\n', encoding="utf-8")
    out = tmp_path / "o"
    p = curate(inp, out, "--tasks", "4", "--workers", "2", "--no-decontam", check=False)
    errors = [x for x in p.stderr.splitlines() if "error:" in x]
    assert p.returncode == 2 and len(errors) == 1 and "shard2.jsonl:9: no 'text' field" in errors[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert not [f for d in ("buckets", "excluded", "work") for f in (out / d).rglob("*") if f.is_file()]
    assert not (out / "curate.stamp.json").exists()
    (inp / "shard2.jsonl").write_text(good, encoding="utf-8")
    curate(inp, out, "--tasks", "4", "--workers", "2", "--no-decontam")
    assert json.loads((out / "report.json").read_text())["funnel"]["input"] == 32


def test_empty_text_goes_to_excluded_and_empty_input_is_refused(tmp_path, data_root):
    inp = write_shards(corpus(data_root, 5), tmp_path / "in", 2)
    with (inp / "shard0.jsonl").open("a") as f:
        f.write('{"id": "blank1", "text": ""}\n{"id": "blank2", "text": "   "}\n')
    curate(inp, tmp_path / "o", "--tasks", "2", "--no-decontam")
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    gone = [json.loads(x) for f in (tmp_path / "o" / "excluded" / "read").glob("*.jsonl") for x in f.read_text().splitlines()]
    assert rep["drops"]["empty_text"] == 2 and sorted(r["id"] for r in gone) == ["blank1", "blank2"]
    assert {r["filter_reason"] for r in gone} == {"empty_text"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jsonl").write_text("\n\n")
    p = curate(tmp_path / "empty", tmp_path / "e", check=False)
    assert p.returncode == 2 and "no records" in p.stderr.splitlines()[-1], p.stderr[-2000:]
    curate(tmp_path / "empty", tmp_path / "e", "--allow-empty")
    assert json.loads((tmp_path / "e" / "report.json").read_text())["funnel"]["input"] == 0


def test_same_size_edit_with_mtime_restored_is_redone(tmp_path, data_root, capsys):
    """The stamp held path + size + mtime: an edit that kept the size, with the mtime put back, reused the old
    buckets. Now it holds each input's sha256 (read again only when the stat key, ctime included, changed)."""
    inp = write_shards(corpus(data_root, 5), tmp_path / "in", 2)
    out = tmp_path / "o"
    curate(inp, out, "--tasks", "2", "--no-decontam")
    before = buckets(out)
    f = inp / "shard1.jsonl"
    raw, st = f.read_bytes(), f.stat()
    i = raw.index(b'"text": "') + 9
    f.write_bytes(raw[:i] + bytes(reversed(raw[i:i + 40])) + raw[i + 40:])  # same size, other bytes
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    p = curate(inp, out, "--tasks", "2", "--no-decontam")
    assert "discarding its work" in p.stderr and buckets(out) != before
    os.utime(f)  # a touch alone (same bytes) is no change
    p = curate(inp, out, "--tasks", "2", "--no-decontam")
    assert "discarding" not in p.stderr


def test_console_keeps_datatrove_records_out_in_either_loguru_format():
    """loguru 0.8 writes the UTC offset after the time; 0.7 did not. Both are datatrove records to keep off the
    console (a fresh install took 0.8 and the cut-short-shard test saw four 'Launching dependency job' lines)."""
    import io

    from data_tools.curate.curate import Console

    out = io.StringIO()
    con = Console(out)
    for stamp in ("2026-12-08 03:26:55.698", "2026-12-08 03:26:55.698 +00:00", "2026-12-08 03:26:55.698 -0530"):
        con.write(f"{stamp} | INFO     | datatrove.executor.local:run:99 - Launching dependency job\n")
        con.write(f"[NODE 0] {stamp} | WARNING  | datatrove.pipeline:run:12 - slow shard\nmore\n")
    con.write("progress 50%\n")
    assert out.getvalue() == "[curate] warning: slow shard\n" * 3 + "progress 50%\n"
