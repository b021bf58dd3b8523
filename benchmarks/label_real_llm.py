"""`data label` with a real model behind a real server: SmolLM2-135M-Instruct under `carebot serve` (transformers
serve), N documents of the general corpus, structured output asked (`--structured auto`) and not (`off`).

Per arm: the LLM client's per-item counts (valid at the first reply, after a re-ask, given up), items/s over the
arm's wall time (two rounds each), and the two rounds' agreement (the paper's keep-consistent rule: same domain,
quality within the score gap). A 135M labeler labels badly: the point is that the plumbing holds and the counts
are honest.

    python benchmarks/label_real_llm.py --n 200 --out runs/bench/label_real_llm
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from carebot.io import write_json, write_text  # noqa: E402
from carebot.paths import data_dir  # noqa: E402
from launch.serve import Server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", default="runs/bench/label_real_llm")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (the server batches them)")
    ap.add_argument("--arms", default="off,auto")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    # a bilingual mix: the first lines of each general-corpus file, English first (wikitext 1/2, cmrc 3/10, thucnews 1/5)
    from carebot.io import iter_jsonl, write_jsonl

    mix = []
    for name, share in (("wikitext2_paragraphs_en", 0.5), ("cmrc2018_wiki_paragraphs_zh", 0.3), ("thucnews_titles_zh", 0.2)):
        rows = [rec for _, rec in zip(range(round(a.n * share)), (r for _, r in iter_jsonl(data_dir() / "general" / f"{name}.jsonl")))]
        mix += [{**r, "id": f"{name}:{i}"} for i, r in enumerate(rows)]
    corpus = [out / "input.jsonl"]
    write_jsonl(corpus[0], mix)
    os.environ.setdefault("OPENAI_API_KEY", "local")
    results = {"n": a.n, "inputs": [str(p) for p in corpus], "engine": "transformers serve", "model": "SmolLM2-135M-Instruct",
               "cores": len(os.sched_getaffinity(0)), "arms": {}}
    with Server("smollm2", log=out / "server.log") as server:
        results["base_url"] = server.base_url
        for arm in a.arms.split(","):
            t0 = time.time()
            p = subprocess.run([sys.executable, "-m", "carebot.cli", "data", "label", "--input", *map(str, corpus),
                                "--out", str(out / arm), "--base-url", server.base_url, "--model", server.model,
                                "--limit", str(a.n), "--structured", arm, "--concurrency", str(a.concurrency),
                                "--timeout", "300", "--no-progress"], cwd=REPO, capture_output=True, text=True)
            wall = time.time() - t0
            # exit 2 with one line when fewer than --min-labelled were labelled: the counts are still written
            if not (out / arm / "summary.json").exists() or p.returncode not in (0, 2):
                print(p.stdout[-2000:], p.stderr[-3000:], file=sys.stderr)
                return p.returncode or 1
            s = json.loads((out / arm / "summary.json").read_text())
            llm = s["llm"]
            results["arms"][arm] = {
                "exit": p.returncode, "error": (p.stderr.strip().splitlines() or [""])[-1] if p.returncode else "",
                "wall_s": round(wall, 1), "items_per_s": round(2 * s["items"] / wall, 3),
                "documents": s["items"], "requests": llm["requests"], "response_format": llm.get("response_format"),
                "first_valid": llm.get("first_valid"), "after_reask": llm.get("after_reask"),
                "given_up": llm.get("failures"), "kept_consistent": s["kept"], "dropped": s["dropped"],
                "agreement": round(s["kept"] / max(1, s["items"] - s["dropped"].get("llm_failed", 0)), 3),
                "kept_by_domain": s["kept_by_domain"], "completion_tokens": llm.get("completion_tokens")}
            print(arm, json.dumps(results["arms"][arm]), flush=True)
    results["server_log_chat_requests"] = (out / "server.log").read_text().count("POST /v1/chat/completions")
    write_json(out / "results.json", results)
    rows = "".join(f"| {k} | {v['response_format']} | {v['documents']} | {v['first_valid']} | {v['after_reask']} | "
                   f"{v['given_up']} | {v['agreement']} | {v['items_per_s']} | {v['wall_s']} |\n"
                   for k, v in results["arms"].items())
    write_text(out / "results.md", f"# data label, SmolLM2-135M-Instruct behind transformers serve ({results['cores']} cores)\n\n"
               "| --structured | response_format | docs | valid first | after re-ask | given up | rounds agree | "
               "replies/s | wall s |\n|---|---|---|---|---|---|---|---|---|\n" + rows)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
