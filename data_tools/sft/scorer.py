"""Shared pieces of the LM-based SFT data selectors (Deita, ConFilter): load any HF causal LM by path,
pad batches, token log-probs, and resumable chunked runs with a manifest."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from carebot.errors import InputError
from carebot.io import write_json, write_jsonl


@dataclass
class Scorer:
    model: Any
    tokenizer: Any
    path: str

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        """Ids of text exactly as written (specials inside it are recognised; no BOS added)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def load_scorer(path: str | Path, dtype: str = "float32", device: str = "auto") -> Scorer:
    """Any HF causal LM + its tokenizer from a local directory (never from a hub)."""
    import torch
    from transformers import AutoModelForCausalLM

    from carebot.tokenizer import load_tokenizer

    p = Path(path).expanduser()
    if not (p / "config.json").exists():
        raise InputError(f"scorer model {p}: not an HF model directory (no config.json)")
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=getattr(torch, dtype), local_files_only=True).to(dev).eval()
    return Scorer(model=model, tokenizer=load_tokenizer(p), path=str(p))


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """Right-padded (ids, attention_mask). Right padding keeps every real token's position and causal
    context identical to the unpadded sequence, so batched scores equal one-at-a-time scores."""
    import torch

    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def forward_logits(sc: Scorer, seqs: Sequence[Sequence[int]]) -> Any:
    """Logits (float32) of a right-padded batch."""
    import torch

    ids, mask = pad_batch(seqs, pad_id_of(sc.tokenizer))
    with torch.inference_mode():
        out = sc.model(input_ids=ids.to(sc.device), attention_mask=mask.to(sc.device))
    return out.logits.float()


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int = 64) -> list[list[int]]:
    """Group indices (longest first) so that rows * longest <= max_tokens (padded tokens per forward)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and ((len(cur) + 1) * lengths[cur[0]] > max_tokens or len(cur) >= max_rows):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


# ----------------------------------------------------------------------------- resumable chunked runs
def run_chunks(items: list[Any], out_dir: Path, chunk: int, fn: Callable[[list[Any]], list[dict[str, Any]]],
               desc: str, progress: bool = True) -> list[dict[str, Any]]:
    """Apply fn to items in chunks; each chunk's output is written atomically to out_dir/parts/NNNNN.jsonl,
    so a rerun (after a crash) skips finished chunks. Returns all outputs in input order."""
    from tqdm.auto import tqdm

    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    out: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    for k in range(0, len(items), chunk):
        f = parts / f"{k // chunk:05d}.jsonl"
        if f.exists():
            recs = [json.loads(l) for l in f.read_text(encoding="utf-8").splitlines() if l.strip()]
        else:
            recs = fn(items[k : k + chunk])
            write_jsonl(f, recs)
        out += recs
        bar.update(min(chunk, len(items) - k))
    bar.close()
    return out


def save_config(out_dir: Path, cfg: Any) -> None:
    """Print the config in full and save it beside the outputs (house rule)."""
    import dataclasses

    d = dataclasses.asdict(cfg)
    print(json.dumps(d, indent=2, ensure_ascii=False))
    write_json(out_dir / "config.json", d)


def histogram_png(path: Path, values: Iterable[float], title: str, xlabel: str, lines: dict[str, float] | None = None,
                  bins: int = 40) -> None:
    """Histogram with optional labelled vertical lines (thresholds); matplotlib Agg, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [v for v in values if v == v]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.hist(vals, bins=bins, color="#4C72B0", alpha=0.85)
    for (name, x), c in zip((lines or {}).items(), ("#C44E52", "#DD8452", "#55A868", "#8172B3")):
        ax.axvline(x, color=c, ls="--", lw=1.5, label=f"{name} = {x:.3g}")
    if lines:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
