"""`carebot convert verify`: the HF model and the megatron checkpoint, side by side on real text.

For each TP x PP layout: build the megatron model at that layout, load the checkpoint (dist_checkpointing
reshards), run the pipeline schedule forward-only, gather the TP-split logits, drop the vocabulary padding,
and compare with the HF model: max |logit diff|, mean next-token loss, and greedy generation."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from carebot.io import write_json
from carebot.errors import ConfigError
from carebot.run_config import ParallelConfig


def default_texts(n: int) -> list[str]:
    """Real zh + en paragraphs from data_dir(): the last 50 of cmrc2018 zh and of wikitext en (on ../shared/data
    beyond the 600 docs the CPT test fixtures take; samples/ carries 300 of each)."""
    from carebot.paths import data_dir

    def tail(name: str) -> list[str]:  # split on "\n" only: splitlines() also breaks at U+2028 inside a record
        lines = [x for x in (root / name).read_text(encoding="utf-8").split("\n") if x.strip()]
        return [json.loads(x)["text"] for x in lines[-50:]]

    root = data_dir() / "general"
    zh, en = tail("cmrc2018_wiki_paragraphs_zh.jsonl"), tail("wikitext2_paragraphs_en.jsonl")
    out = []
    for a, b in zip(zh, en):
        out += [a, b]
    return out[:n]


def read_texts(path: Path | None, n: int) -> list[str]:
    if path is None:
        return default_texts(n)
    texts = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConfigError(f"{path}:{i}: expected a JSON object with a `text` field ({e})") from e
    return texts[:n]


def parse_layouts(s: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(x) for x in item.lower().split("x")) for item in s.split(",")]  # type: ignore[misc]
    except ValueError as e:
        raise ConfigError(f"--layouts {s!r}: expected TPxPP items like 1x1,2x1,1x2") from e


class MegatronLM:
    """The megatron model at the current parallel state: full-vocab logits and per-token loss on every rank."""

    def __init__(self, model, vocab: int):
        self.model, self.vocab = model, vocab
        model.eval()

    def _run(self, ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        from megatron.core import parallel_state as mpu
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        pos = torch.arange(ids.shape[1]).unsqueeze(0)

        def step(_it, model):  # loss_func None: the schedule hands back the raw last-stage output
            return model(ids, pos, None, labels=labels), None

        with torch.no_grad():
            out = get_forward_backward_func()(forward_step_func=step, data_iterator=iter([None]), model=[self.model],
                                              num_microbatches=1, seq_length=ids.shape[1], micro_batch_size=1,
                                              forward_only=True)
        if not mpu.is_pipeline_last_stage():
            return None
        t = out[0]
        return t.float() if labels is not None else gather_from_tensor_model_parallel_region(t)[..., : self.vocab].float()

    def _bcast(self, t: torch.Tensor | None, shape) -> torch.Tensor:
        """From the last pipeline stage to every stage (pipeline ranks need the next token too)."""
        from megatron.core import parallel_state as mpu

        group = mpu.get_pipeline_model_parallel_group()
        src = dist.get_global_rank(group, mpu.get_pipeline_model_parallel_world_size() - 1)
        buf = t.contiguous() if t is not None else torch.empty(shape, dtype=torch.float32)
        dist.broadcast(buf, src=src, group=group)
        return buf

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self._bcast(self._run(ids, None), (*ids.shape, self.vocab))

    def loss(self, ids: torch.Tensor) -> float:
        """Next-token loss over the real vocabulary (the padding rows of the output layer, which the HF export
        drops, are left out of the softmax as HF leaves them out)."""
        logits = self.logits(ids[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).item()

    def greedy(self, ids: torch.Tensor, n: int) -> list[int]:
        out = ids
        for _ in range(n):  # no KV cache: a full forward per token is fine at verify scale
            nxt = self.logits(out)[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
        return out[0, ids.shape[1]:].tolist()


def _hf_side(hf_dir: Path, encoded: list[torch.Tensor], n_gen: int) -> dict:
    from transformers import AutoModelForCausalLM, GenerationConfig

    # eager attention computes what megatron's local attention computes: the comparison is exact, not sdpa's ~1e-4
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True,
                                                 attn_implementation="eager")
    model.eval()
    res = {"logits": [], "loss": [], "greedy": None}
    with torch.no_grad():
        for ids in encoded:
            out = model(ids, labels=ids)
            res["logits"].append(out.logits.float())
            res["loss"].append(out.loss.item())
        if n_gen:
            gc = GenerationConfig(max_new_tokens=n_gen, min_new_tokens=n_gen, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
            g = model.generate(encoded[0], attention_mask=torch.ones_like(encoded[0]), generation_config=gc)
            res["greedy"] = g[0, encoded[0].shape[1]:].tolist()
    return res


def check_layouts(args):
    """(model config, tokenizer, layouts) of a verify command line, every layout checked against the model:
    cheap, so it runs before any rank is started."""
    from pretrain.convert import model_config_from_hf, read_hf_config
    from pretrain.model import check_model_config
    from carebot.tokenizer import load_tokenizer

    m = model_config_from_hf(read_hf_config(args.hf), str(args.hf / "config.json"))
    tok = load_tokenizer(args.hf)
    layouts = parse_layouts(args.layouts)
    for tp, pp in layouts:
        check_model_config(m, ParallelConfig(tensor=tp, pipeline=pp), len(tok))
    return m, tok, layouts


def verify(args) -> dict:
    from megatron.core import parallel_state as mpu

    from pretrain import checkpoint as ckpt
    from pretrain import distributed
    from pretrain.convert import build_megatron, checkpoint_vocab_rows, resolve_checkpoint

    m, tok, layouts = check_layouts(args)
    vocab = len(tok)
    it = resolve_checkpoint(args.megatron)
    rows, _ = checkpoint_vocab_rows(it)
    texts = read_texts(args.texts, args.num_texts)
    encoded = [torch.tensor([tok(t)["input_ids"][: args.max_tokens]]) for t in texts]
    results = []
    hf_res = None
    for tp, pp in layouts:
        distributed.init(ParallelConfig(tensor=tp, pipeline=pp), seed=1234)
        if hf_res is None and dist.get_rank() == 0:
            hf_res = _hf_side(args.hf, encoded, args.generate)
        model = build_megatron(m, rows, torch.float32, seq_length=max(e.shape[1] for e in encoded) + args.generate)
        ckpt.load(it, model)
        lm = MegatronLM(model, vocab)
        meg = {"logits": [lm.logits(e) for e in encoded], "loss": [lm.loss(e) for e in encoded],
               "greedy": lm.greedy(encoded[0], args.generate) if args.generate else None}
        if dist.get_rank() == 0:
            diff = max((a - b).abs().max().item() for a, b in zip(meg["logits"], hf_res["logits"]))
            loss_diff = max(abs(a - b) for a, b in zip(meg["loss"], hf_res["loss"]))
            results.append({"tp": tp, "pp": pp, "max_abs_logit_diff": diff, "max_abs_loss_diff": loss_diff,
                            "megatron_loss": sum(meg["loss"]) / len(encoded),
                            "hf_loss": sum(hf_res["loss"]) / len(encoded),
                            "greedy_equal": meg["greedy"] == hf_res["greedy"],
                            "greedy_tokens": len(meg["greedy"] or []),
                            "max_abs_logit": max(x.abs().max().item() for x in hf_res["logits"])})
        del model, lm
        mpu.destroy_model_parallel()  # the next layout builds fresh TP/PP groups on the same processes
    if dist.get_rank() != 0:
        return None
    scale = max(r["max_abs_logit"] for r in results)
    tol = args.atol if args.atol is not None else args.rtol * scale  # relative to the logits' scale: any layout
    for r in results:
        r["ok"] = (r["max_abs_logit_diff"] <= tol and r["max_abs_loss_diff"] <= tol
                   and (r["greedy_equal"] or not args.generate))
    ok = all(r["ok"] for r in results)
    summary = {"ok": ok, "tolerance": tol, "rtol": args.rtol, "atol": args.atol, "hf": str(args.hf), "megatron": str(it), "texts": len(encoded),
               "tokens": [e.shape[1] for e in encoded], "layouts": results}
    if args.summary:
        write_json(args.summary, summary)
    return summary


def verdict(summary: dict) -> str:
    """The one line `carebot convert verify` prints."""
    per = "; ".join(f"TP{r['tp']}xPP{r['pp']} |dlogit| {r['max_abs_logit_diff']:.2e} |dloss| {r['max_abs_loss_diff']:.2e}"
                    + (" greedy equal" if r["greedy_equal"] else f" greedy DIFFERS ({r['greedy_tokens']} tokens)")
                    + ("" if r["ok"] else " FAIL") for r in summary["layouts"])
    return (f"convert verify: {'PASS' if summary['ok'] else 'FAIL'} (tolerance {summary['tolerance']:.2e}"
            f"{' = rtol x max |logit|' if summary['atol'] is None else ''}): {per}")
