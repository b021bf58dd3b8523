"""The seven medical MCQ benchmarks of CareBot (paper, Evaluation): loaders for every local file format and
the lm-eval-harness prompt of each, so our log-likelihood numbers are comparable with lm-eval's.

Formats read (`load_items(path)` detects them):
- our normalised JSONL (the full data sets/benchmarks: `{id, question, options{A..}, answer, subject, split}`,
  PubMedQA `{id, question, contexts[], answer: yes|no|maybe, split}`)
- MedQA upstream JSONL `{question, options{A..}, answer_idx}`; MedMCQA upstream JSON lines `{question, opa..opd, cop}`
- PubMedQA upstream `ori_pqal.json` (`{pmid: {QUESTION, CONTEXTS, final_decision}}`) + optional `test_ground_truth.json`
- MMLU CSV dirs (headerless `question,A,B,C,D,answer`; `{subject}_{split}.csv`), CMMLU CSV dirs
  (`{split}/{subject}.csv`, header `,Question,A,B,C,D,Answer`), C-Eval CSV dirs (`{split}/{subject}_{split}.csv`,
  header `id,question,A,B,C,D,answer,explanation`)
- CMB-Exam JSON (list of `{id, question, option{A..}, answer, question_type, exam_type}`; answers may come from a
  separate `CMB-test-choice-answer.json` given with `answers=`).
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from carebot.errors import InputError

LETTERS = "ABCDEFGH"

# Medical subsets (paper, appendix E; task names as in lm-eval-harness).
MMLU_MED = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
            "professional_medicine")
# CMMLU has no college biology; the paper's six map to these CMMLU subjects (genetics = medical genetics,
# plus traditional Chinese medicine, the sixth medical subject of CMMLU's list). Override with --subjects.
CMMLU_MED = ("anatomy", "clinical_knowledge", "college_medicine", "genetics", "professional_medicine",
             "traditional_chinese_medicine")
CEVAL_MED = ("basic_medicine", "clinical_medicine", "physician", "veterinary_medicine")
# Subject names as lm-eval writes them into each task's description.
CMMLU_ZH = {"anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medicine": "大学医学", "genetics": "遗传学",
            "professional_medicine": "专业医学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学",
            "nutrition": "营养学", "college_medical_statistics": "大学医学统计"}
CEVAL_ZH = {"basic_medicine": "基础医学", "clinical_medicine": "临床医学", "physician": "医师资格",
            "veterinary_medicine": "兽医学"}


class BenchmarkError(InputError):
    """Bad benchmark input; the message names the file (and line)."""


@dataclass
class MCQItem:
    id: str
    question: str
    options: dict[str, str]  # letter -> text, in display order
    answer: str  # gold letters, sorted ("A", or "ACD" for CMB multiple-answer questions)
    subject: str = ""
    split: str = ""
    context: str = ""  # PubMedQA abstract
    multi: bool = False  # more than one answer may be right (CMB 多项选择题)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BenchmarkSpec:
    name: str
    title: str  # column name in reports (the paper's spelling)
    lang: str
    template: str  # prompt family, see `doc_to_text`
    path: str = ""  # default file under data_dir(), "" when not shipped
    split: str = "test"
    subjects: tuple[str, ...] = ()
    choice: str = "letter"  # continuation scored: the option letter, or the option text (PubMedQA yes/no/maybe)
    mode: str = "loglik"  # default scoring: loglik (lm-eval) or generate (OpenCompass style, CMB)
    table1: bool = False  # one of the five in the paper's Table 1 average


BENCHMARKS: dict[str, BenchmarkSpec] = {s.name: s for s in [
    BenchmarkSpec(name="medqa", title="MedQA", lang="en", template="medqa", table1=True,
                  path="benchmarks/medqa_usmle_4opt_test.jsonl"),
    BenchmarkSpec(name="mmlu_med", title="MMLU-Med", lang="en", template="mmlu", subjects=MMLU_MED, table1=True,
                  path="benchmarks/mmlu_medical_test.jsonl"),
    BenchmarkSpec(name="medmcqa", title="MedMCQA", lang="en", template="medmcqa", split="dev",
                  path="benchmarks/medmcqa_dev.jsonl"),
    BenchmarkSpec(name="pubmedqa", title="PubMedQA", lang="en", template="pubmedqa", choice="text",
                  path="benchmarks/pubmedqa_pqal.jsonl"),
    BenchmarkSpec(name="cmb", title="CMB", lang="zh", template="cmb", mode="generate", table1=True),
    BenchmarkSpec(name="cmmlu_med", title="CMMLU-Med", lang="zh", template="cmmlu", subjects=CMMLU_MED,
                  table1=True),
    BenchmarkSpec(name="ceval_med", title="C-Eval-Med", lang="zh", template="ceval", split="val",
                  subjects=CEVAL_MED, table1=True),
]}
TABLE1 = [n for n, s in BENCHMARKS.items() if s.table1]  # MedQA, MMLU-Med, CMB, CMMLU-Med, C-Eval-Med


def get_spec(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


# ----------------------------------------------------------------------------- prompts (lm-eval's, verbatim)
def description(spec: BenchmarkSpec, item: MCQItem) -> str:
    """Task description lm-eval prepends once (before few-shot examples)."""
    if spec.template == "mmlu":
        return f"The following are multiple choice questions (with answers) about {item.subject.replace('_', ' ')}.\n\n"
    if spec.template == "cmmlu":
        return f"以下是关于{CMMLU_ZH.get(item.subject, item.subject)}的单项选择题，请直接给出正确答案的选项。\n\n"
    if spec.template == "ceval":
        return f"以下是中国关于{CEVAL_ZH.get(item.subject, item.subject)}的单项选择题，请选出其中的正确答案。\n\n"
    if spec.template == "cmb":  # OpenCompass / CMB repo instruction
        kind = "多项选择题" if item.multi else "单项选择题"
        return f"以下是中国{item.meta.get('exam_type', '医学')}考试的{kind}，请直接给出正确答案的选项。\n\n"
    return ""


def doc_to_text(spec: BenchmarkSpec, item: MCQItem) -> str:
    opts = "".join(f"{k}. {v}\n" for k, v in item.options.items())
    t = spec.template
    if t == "medqa":
        return f"Question: {item.question}\n{opts}Answer:"
    if t == "medmcqa":
        return f"Question: {item.question}\nChoices:\n{opts}Answer:"
    if t == "mmlu":
        return f"{item.question.strip()}\n{opts}Answer:"
    if t == "pubmedqa":
        return f"Abstract: {item.context}\nQuestion: {item.question}\nAnswer:"
    if t in ("cmmlu", "ceval", "cmb"):
        return f"{item.question.strip()}\n{opts}答案："
    raise BenchmarkError(f"unknown template {t!r}")


def choices(spec: BenchmarkSpec, item: MCQItem) -> list[str]:
    """The strings scored as continuations (lm-eval's doc_to_choice)."""
    return list(item.options.values()) if spec.choice == "text" else list(item.options)


def target(spec: BenchmarkSpec, item: MCQItem) -> str:
    return item.options[item.answer[0]] if spec.choice == "text" else item.answer


def permute(item: MCQItem, shift: int) -> MCQItem:
    """Cyclic shift of option texts over the same letters (the option-order robustness report)."""
    letters, texts = list(item.options), list(item.options.values())
    k = shift % len(texts)
    new_texts = texts[-k:] + texts[:-k] if k else texts
    pos = {l: (i + k) % len(texts) for i, l in enumerate(letters)}
    ans = "".join(sorted(letters[pos[a]] for a in item.answer))
    return replace(item, options=dict(zip(letters, new_texts)), answer=ans)


# ----------------------------------------------------------------------------- loaders
def _jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((ln, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BenchmarkError(f"{path}:{ln}: not JSON ({e.msg})") from None
    return rows


def _check(item: MCQItem, where: str) -> MCQItem:
    if not item.question.strip():
        raise BenchmarkError(f"{where}: empty question")
    if len(item.options) < 2:
        raise BenchmarkError(f"{where}: fewer than 2 options")
    if item.answer and any(a not in item.options for a in item.answer):
        raise BenchmarkError(f"{where}: answer {item.answer!r} not among options {list(item.options)}")
    return item


def _letters_from(opts: list[str]) -> dict[str, str]:
    return {LETTERS[i]: str(o) for i, o in enumerate(opts)}


def _from_record(d: dict, where: str, fallback_id: str) -> MCQItem:
    """One JSON record in our normalised schema, MedQA / MedMCQA upstream, PubMedQA normalised, or CMB-Exam."""
    if "opa" in d:  # MedMCQA upstream; cop is 1-based in the GitHub release, 0-based on the HF hub
        opts = _letters_from([d["opa"], d["opb"], d["opc"], d["opd"]])
        cop = int(d.get("cop", 0) or 0)
        base = int(d.get("_cop_base", 1))
        ans = LETTERS[cop - base] if "cop" in d else ""
        return _check(MCQItem(str(d.get("id", fallback_id)), d["question"], opts, ans,
                              subject=d.get("subject_name") or "", split=d.get("split", "")), where)
    if "contexts" in d or "CONTEXTS" in d:  # PubMedQA
        ctx = d.get("contexts") or d.get("CONTEXTS")
        ans = d.get("answer") or d.get("final_decision") or ""
        opts = {"A": "yes", "B": "no", "C": "maybe"}
        if ans and ans not in opts.values():
            raise BenchmarkError(f"{where}: PubMedQA answer must be yes|no|maybe, got {ans!r}")
        letter = {v: k for k, v in opts.items()}.get(ans, "")
        return MCQItem(str(d.get("id", fallback_id)), d.get("question") or d.get("QUESTION"), opts, letter,
                       split=d.get("split", ""), context="\n".join(ctx))
    opts = d.get("options") or d.get("option")
    if not isinstance(opts, dict) or "question" not in d:
        raise BenchmarkError(f"{where}: not an MCQ record (need question + options/option dict, or opa..opd)")
    opts = {k: str(v) for k, v in opts.items() if str(v).strip()}  # CMB pads missing options with ""
    ans = d.get("answer_idx") or d.get("answer") or ""  # MedQA upstream: answer is the text, answer_idx the letter
    if ans not in opts and isinstance(ans, str) and ans not in ("",):
        ans = "".join(sorted(set(ans.replace(",", "").replace("、", "").replace(" ", ""))))
    multi = "多项" in str(d.get("question_type", "")) or len(ans) > 1
    meta = {k: d[k] for k in ("exam_type", "exam_class", "question_type") if k in d}
    return _check(MCQItem(str(d.get("id", fallback_id)), d["question"], opts, ans,
                          subject=str(d.get("subject") or d.get("exam_subject") or ""), split=d.get("split", ""),
                          multi=multi, meta=meta), where)


def _csv_rows(path: Path, header: bool) -> list[tuple[int, list[str]]]:
    """(first line of the record, fields) per non-empty record; a quoted field may span lines."""
    rows, prev = [], 0
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        for r in reader:
            rows.append((prev + 1, r))
            prev = reader.line_num
    return [(ln, r) for i, (ln, r) in enumerate(rows) if (i >= 1 or not header) and r]


# Fields a row needs per CSV family (question, 4 options, answer; CMMLU / C-Eval lead with an id column).
CSV_FIELDS = {"mmlu": (6, "question,A,B,C,D,answer"), "cmmlu": (7, ",Question,A,B,C,D,Answer"),
              "ceval": (7, "id,question,A,B,C,D,answer[,explanation]")}


def _load_csv_dir(root: Path, family: str, split: str, subjects: tuple[str, ...]) -> list[MCQItem]:
    """MMLU / CMMLU / C-Eval per-subject CSV files."""
    items = []
    for subj in subjects:
        if family == "mmlu":
            cands = [root / split / f"{subj}_{split}.csv", root / f"{subj}_{split}.csv"]
        elif family == "cmmlu":
            cands = [root / split / f"{subj}.csv", root / f"{subj}.csv"]
        else:
            cands = [root / split / f"{subj}_{split}.csv", root / f"{subj}_{split}.csv"]
        path = next((c for c in cands if c.exists()), None)
        if path is None:
            raise BenchmarkError(f"{root}: no {family} file for subject {subj!r} split {split!r} "
                                 f"(looked for {', '.join(str(c) for c in cands)})")
        need, cols = CSV_FIELDS[family]
        for ln, r in _csv_rows(path, header=family != "mmlu"):
            where = f"{path}:{ln}"
            if len(r) < need:
                raise BenchmarkError(f"{where}: {family} row has {len(r)} field(s), expected {need} ({cols})")
            if family == "mmlu":  # question,A,B,C,D,answer
                q, opts, ans, iid = r[0], r[1:5], r[5] if len(r) > 5 else "", f"{subj}-{ln}"
            elif family == "cmmlu":  # ,Question,A,B,C,D,Answer
                q, opts, ans, iid = r[1], r[2:6], r[6] if len(r) > 6 else "", f"{subj}-{r[0]}"
            else:  # id,question,A,B,C,D,answer,explanation
                q, opts, ans, iid = r[1], r[2:6], r[6] if len(r) > 6 else "", f"{subj}-{r[0]}"
            if len(opts) != 4:
                raise BenchmarkError(f"{where}: expected 4 options, got {len(opts)}")
            items.append(_check(MCQItem(f"{family}-{split}-{iid}", q, _letters_from(opts), ans.strip(), subject=subj,
                                        split=split), where))
    return items


def load_items(path: str | Path, *, family: str = "", split: str = "", subjects: tuple[str, ...] = (),
               answers: str | Path | None = None) -> list[MCQItem]:
    """Read any supported file or directory into MCQItems (no filtering except CSV subject selection)."""
    p = Path(path)
    if not p.exists():
        raise BenchmarkError(f"benchmark file not found: {p}")
    if p.is_dir():
        if family not in ("mmlu", "cmmlu", "ceval"):
            raise BenchmarkError(f"{p}: a directory needs family mmlu|cmmlu|ceval, got {family!r}")
        return _load_csv_dir(p, family, split, subjects)
    if p.suffix == ".jsonl" or p.name.endswith(".jsonl.gz"):
        return [_from_record(d, f"{p}:{ln}", f"{p.stem}-{ln}") for ln, d in _jsonl(p)]
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:  # MedMCQA's "json" is JSON lines
        if e.lineno > 1 or "Extra data" in e.msg:
            return [_from_record(d, f"{p}:{ln}", f"{p.stem}-{ln}") for ln, d in _jsonl(p)]
        raise BenchmarkError(f"{p}:{e.lineno}: not JSON ({e.msg})") from None
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "QUESTION" in v for v in data.values()):
        gt = {}  # PubMedQA ori_pqal.json; test ids from test_ground_truth.json beside it
        gt_path = p.with_name("test_ground_truth.json")
        if gt_path.exists():
            gt = json.loads(gt_path.read_text(encoding="utf-8"))
        items = []
        for pmid, d in data.items():
            it = _from_record(d, f"{p}:{pmid}", f"pubmedqa-{pmid}")
            it.id, it.split = f"pubmedqa-{pmid}", ("test" if pmid in gt else "trainval") if gt else ""
            items.append(it)
        return items
    if not isinstance(data, list):
        raise BenchmarkError(f"{p}: expected a JSON list of questions or a PubMedQA dict")
    items = [_from_record(d, f"{p}:[{i}]", f"{p.stem}-{i}") for i, d in enumerate(data)]
    if answers is not None:  # CMB test answers ship apart from the questions
        gold = {str(a["id"]): a["answer"] for a in json.loads(Path(answers).read_text(encoding="utf-8"))}
        for it in items:
            if it.id in gold:
                it.answer = "".join(sorted(gold[it.id]))
                it.multi = it.multi or len(it.answer) > 1
    return items


def load_benchmark(name: str, path: str | Path | None = None, *, split: str | None = None,
                   subjects: tuple[str, ...] | None = None, limit: int | None = None,
                   answers: str | Path | None = None, limit_seed: int = 0, info: dict | None = None) -> list[MCQItem]:
    """Items of one benchmark: default file under data_dir() unless `path`; medical-subject and split filters;
    `limit` draws a seeded subject-stratified subset (`stratified_subset`). A dict passed as `info` receives
    what was dropped and sampled: n, n_total, subset, limit_seed, subjects, subjects_total, missing_subjects,
    dropped {"split": n, "subjects": {name: n}}."""
    spec = get_spec(name)
    split = spec.split if split is None else split
    explicit, subjects = subjects is not None, spec.subjects if subjects is None else tuple(subjects)
    if path is None:
        if not spec.path:
            raise BenchmarkError(f"{name}: no local copy ships with the data; pass --path to the upstream files")
        from carebot.paths import data_dir
        path = data_dir() / spec.path
    items = load_items(path, family=spec.template, split=split, subjects=subjects, answers=answers)
    dropped: dict = {"split": 0, "subjects": {}, "kept_split": split}
    # Filters apply only when the file carries the field (upstream CSVs are already per split/subject).
    if split and any(it.split for it in items):
        kept = [it for it in items if it.split == split]
        dropped["split"], items = len(items) - len(kept), kept
    # CMB's exam subjects are filtered only on request (the benchmark has no subject list of its own)
    filtered = bool(subjects) and any(it.subject for it in items) and (explicit or spec.template != "cmb")
    if explicit and subjects and items and not filtered:
        raise BenchmarkError(f"{path}: subjects {', '.join(subjects)} asked for, but {name}'s items carry no subject")
    if filtered:
        for it in items:
            if it.subject not in subjects:
                key = it.subject or "(no subject)"
                dropped["subjects"][key] = dropped["subjects"].get(key, 0) + 1
        items = [it for it in items if it.subject in subjects]
    if not items:
        raise BenchmarkError(f"{path}: no items for {name} (split={split!r}, subjects={subjects})")
    missing = [it.id for it in items if not it.answer]
    if missing:
        raise BenchmarkError(f"{path}: {len(missing)} items without a gold answer (first: {missing[0]})")
    out = stratified_subset(items, limit, limit_seed) if limit else items
    if info is not None:
        info.update(n=len(out), n_total=len(items), subset=len(out) < len(items),
                    limit_seed=limit_seed if len(out) < len(items) else None,
                    subjects=_counts(out), subjects_total=_counts(items), dropped=dropped,
                    missing_subjects=[s for s in subjects if filtered and not any(it.subject == s for it in items)])
    return out


def _counts(items: list[MCQItem]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it.subject] = out.get(it.subject, 0) + 1
    return out


def sampling_kind(subjects: dict | None) -> str:
    """How `stratified_subset` drew a subset with these per-subject counts, in the one wording every report uses:
    "subject-stratified" over several subjects, "random" when the benchmark has one stratum (no subjects)."""
    return "subject-stratified" if len(subjects or {}) > 1 else "random"


def stratified_subset(items: list[MCQItem], limit: int, seed: int = 0) -> list[MCQItem]:
    """`limit` items, allocated to subjects in proportion by largest remainder (each subject within +-1 of
    limit * n_s / N; ties go to the subject name that sorts first), a seeded sample inside each subject
    (random.Random(f"{seed}-{subject}")), returned in the original order. Items without a subject are one stratum."""
    if limit <= 0:
        raise BenchmarkError(f"limit must be a positive number of items, got {limit}")
    if limit >= len(items):
        return list(items)
    by: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by.setdefault(it.subject, []).append(i)
    n = len(items)
    quota = {s: limit * len(ix) // n for s, ix in by.items()}
    rest = sorted(by, key=lambda s: (-(limit * len(by[s]) % n), s))[: limit - sum(quota.values())]
    keep: set[int] = set()
    for s, ix in by.items():
        keep.update(random.Random(f"{seed}-{s}").sample(ix, quota[s] + (s in rest)))
    return [it for i, it in enumerate(items) if i in keep]


def fewshot_pool(name: str, path: str | Path | None, items: list[MCQItem]) -> list[MCQItem]:
    """Dev-split examples for k-shot: the `dev` split of CSV families, else items outside the eval split."""
    spec = get_spec(name)
    if path is not None and Path(path).is_dir():
        subjects = tuple(dict.fromkeys(it.subject for it in items)) or spec.subjects
        return load_items(path, family=spec.template, split="dev", subjects=subjects)
    return []


def sample_fewshot(pool: list[MCQItem], item: MCQItem, k: int, seed: int) -> list[MCQItem]:
    """k examples, same subject when possible, never the item itself; `seed` only matters when k > 0."""
    if k <= 0 or not pool:
        return []
    same = [p for p in pool if p.subject == item.subject and p.id != item.id] or [p for p in pool if p.id != item.id]
    rng = random.Random(f"{seed}-{item.id}")
    return rng.sample(same, min(k, len(same)))
