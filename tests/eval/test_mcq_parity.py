"""Our acc / acc_norm equal lm-eval-harness's on the same real items, prompt and model.

lm-eval runs offline on local files: its own task YAMLs (and preprocess functions) for medqa_4options,
mmlu_<medical subject> and pubmedqa, copied with `dataset_path: json` pointed at the real items of
data_dir() (../shared/data, or samples/ in a bare clone) converted to each task's hub schema."""
import json
import re
import shutil
from pathlib import Path

import pytest

from eval import benchmarks as B
from eval.engine import EngineConfig, HFEngine
from eval.mcq import build_context, score_loglik

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval==0.4.13 not installed (pip install lm-eval==0.4.13 accelerate)")
pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate (pip install accelerate)")

SMALL = {"medqa": 16, "mmlu_med": 3, "pubmedqa": 6}  # mmlu_med: per subject (6 subjects)
LARGE = {"medqa": 200, "mmlu_med": 20, "pubmedqa": 100}  # at most: samples/ has 49 PubMedQA test items


def _items(N):
    out = {"medqa": B.load_benchmark("medqa", limit=N["medqa"]), "pubmedqa": B.load_benchmark("pubmedqa", limit=N["pubmedqa"])}
    mm = B.load_benchmark("mmlu_med")
    out["mmlu_med"] = [it for s in B.MMLU_MED for it in [x for x in mm if x.subject == s][:N["mmlu_med"]]]
    assert {it.subject for it in out["mmlu_med"]} == set(B.MMLU_MED) and all(out.values())
    return out


def _hub_row(name, it):
    """Our item in the schema of the hub dataset lm-eval's task reads."""
    if name == "medqa":
        return {"sent1": it.question, **{f"ending{i}": v for i, v in enumerate(it.options.values())},
                "label": "ABCD".index(it.answer)}
    if name == "pubmedqa":
        return {"QUESTION": it.question, "CONTEXTS": it.context.split("\n"), "final_decision": it.options[it.answer]}
    return {"question": it.question, "choices": list(it.options.values()), "answer": "ABCD".index(it.answer),
            "subject": it.subject}


def _write_tasks(root: Path, items: dict) -> list[str]:
    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    names = []

    def local(yaml_text: str, data: Path, task: str) -> str:
        y = re.sub(r"^dataset_path:.*$", f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}", yaml_text, flags=re.M)
        y = re.sub(r"^\"?dataset_name\"?:.*$", "", y, flags=re.M)
        y = re.sub(r"^(training|validation|fewshot)_split:.*$", "", y, flags=re.M)  # 0-shot: test split only
        y = re.sub(r"^fewshot_config:\n(  .*\n)*", "", y, flags=re.M)
        y = re.sub(r"^\"?task\"?:.*$", f"task: {task}", y, flags=re.M)
        return re.sub(r"^\"?tag\"?:.*$", "", y, flags=re.M)

    for name, sub, yml in (("medqa", "medqa", "medqa.yaml"), ("pubmedqa", "pubmedqa", "pubmedqa.yaml")):
        d = root / name
        shutil.copytree(tasks_dir / sub, d, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
        data = d / "test.jsonl"
        data.write_text("".join(json.dumps(_hub_row(name, it)) + "\n" for it in items[name]))
        (d / yml).write_text(local((d / yml).read_text(), data, f"local_{name}"))
        names.append(f"local_{name}")
    d = root / "mmlu"
    d.mkdir()
    template = (tasks_dir / "mmlu" / "default" / "_default_template_yaml").read_text()
    for s in B.MMLU_MED:
        data = d / f"{s}.jsonl"
        data.write_text("".join(json.dumps(_hub_row("mmlu_med", it)) + "\n" for it in items["mmlu_med"] if it.subject == s))
        sub_yaml = (tasks_dir / "mmlu" / "default" / f"mmlu_{s}.yaml").read_text().replace('"include": "_default_template_yaml"', "")
        (d / f"mmlu_{s}.yaml").write_text(local(template + "\n" + sub_yaml, data, f"local_mmlu_{s}"))
        names.append(f"local_mmlu_{s}")
    return names


def test_acc_equals_lm_eval(tiny_llama3_lm_dir, tmp_path):
    _parity(tiny_llama3_lm_dir, tmp_path, SMALL)


@pytest.mark.slow
def test_acc_equals_lm_eval_large(tiny_llama3_lm_dir, tmp_path):
    _parity(tiny_llama3_lm_dir, tmp_path, LARGE)


def _parity(tiny_llama3_lm_dir, tmp_path, N):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    items = _items(N)
    engine = HFEngine(EngineConfig(model=str(tiny_llama3_lm_dir), batch_size=8))
    ours = {}
    for name, its in items.items():
        spec = B.get_spec(name)
        ours[name] = score_loglik(engine, spec, its, [build_context(spec, it, []) for it in its])

    tasks = _write_tasks(tmp_path / "tasks", items)
    lm = HFLM(pretrained=engine.model, tokenizer=engine.tok, batch_size=1)
    res = simple_evaluate(model=lm, tasks=tasks, num_fewshot=0, log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))

    def theirs(task):
        smp = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        return smp, res["results"][task]

    checked = 0
    for name, task_list in (("medqa", ["local_medqa"]), ("pubmedqa", ["local_pubmedqa"]),
                            ("mmlu_med", [f"local_mmlu_{s}" for s in B.MMLU_MED])):
        rows = iter(ours[name])
        for task in task_list:
            smp, agg = theirs(task)
            mine = [next(rows) for _ in smp]
            for r, s in zip(mine, smp):
                their_ll = [x[0] for x in s["filtered_resps"]]
                assert r["loglik"] == pytest.approx(their_ll, abs=2e-4), (task, s["doc_id"])
                assert r["correct"] == s["acc"], (task, s["doc_id"])
                if "acc_norm" in s:
                    assert r["correct_norm"] == s["acc_norm"], (task, s["doc_id"])
                checked += 1
            assert sum(r["correct"] for r in mine) / len(mine) == agg["acc,none"]
            if "acc_norm,none" in agg:
                assert sum(r["correct_norm"] for r in mine) / len(mine) == agg["acc_norm,none"]
    assert checked == sum(len(v) for v in items.values())  # lm-eval scored every item we did, no more
