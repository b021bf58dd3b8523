"""Model back-ends for evaluation: an HF causal LM directory (default) or a vLLM engine (when installed).

Both expose `loglikelihood([(context, continuation)]) -> [(logprob, is_greedy)]` with lm-eval-harness's exact
tokenisation rules (so `acc` matches lm-eval's), and `generate(prompts) -> [text]`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from carebot.errors import ConfigError, InputError

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EngineConfig:
    model: str  # HF model directory (config.json + weights + tokenizer)
    engine: str = "hf"  # hf | vllm
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    max_length: int = 4096  # context window for scoring (left-truncated beyond it, as lm-eval does)
    add_bos: bool | None = None  # None: the tokenizer's own default (lm-eval's behaviour)


def encode_pair(tok, context: str, continuation: str, add_bos: bool | None = None) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation; the whole string is
    encoded once and split, so the continuation's tokens are those the model really sees."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    kw = {} if add_bos is None else {"add_special_tokens": add_bos}
    whole = tok.encode(context + continuation, **kw)
    ctx = tok.encode(context, **kw)
    return ctx, whole[len(ctx):]


class HFEngine:
    def __init__(self, cfg: EngineConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        p = Path(cfg.model)
        if not (p / "config.json").exists():
            raise InputError(f"{p}: not an HF model directory (no config.json)")
        self.cfg = cfg
        self.tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True,
                                                          dtype=getattr(torch, cfg.dtype)).to(cfg.device).eval()
        self.torch = torch

    def loglikelihood(self, pairs: list[tuple[str, str]], desc: str = "loglik") -> list[tuple[float, bool]]:
        from tqdm.auto import tqdm

        torch = self.torch
        reqs = []
        for ctx, cont in pairs:
            c, k = encode_pair(self.tok, ctx, cont, self.cfg.add_bos)
            row = (c + k)[-(self.cfg.max_length + 1):][:-1]  # the model reads all but the last token
            reqs.append((tuple(row), k))
        # Identical rows (same context, one-token continuations like " A".." D") share one forward pass.
        rows = sorted({r for r, _ in reqs}, key=len, reverse=True)
        need: dict[tuple, int] = {}
        for r, k in reqs:
            need[r] = max(need.get(r, 0), len(k))
        out_rows: dict[tuple, torch.Tensor] = {}
        bs = self.cfg.batch_size
        for i in tqdm(range(0, len(rows), bs), desc=desc, leave=False):
            batch = rows[i:i + bs]
            width = len(batch[0])
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for j, r in enumerate(batch):  # right padding: real positions never attend to pads (causal)
                ids[j, :len(r)] = torch.tensor(r)
            # Only the positions that predict continuation tokens go through the LM head (vocab 128k).
            keep = sorted({p for r in batch for p in range(len(r) - need[r], len(r))})
            with torch.no_grad():
                logits = self.model(ids.to(self.cfg.device), logits_to_keep=torch.tensor(keep)).logits
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
            col = {p: n for n, p in enumerate(keep)}
            for j, r in enumerate(batch):
                out_rows[r] = lp[j, [col[p] for p in range(len(r) - need[r], len(r))]]
        res = []
        for r, k in reqs:
            lp = out_rows[r][need[r] - len(k):]  # last len(k) kept positions predict the continuation
            tgt = torch.tensor(k)
            ll = float(lp.gather(1, tgt[:, None]).sum())
            res.append((ll, bool((lp.argmax(-1) == tgt).all())))
        return res

    def generate(self, prompts: list[str], *, max_new_tokens: int = 16, temperature: float = 0.0, seed: int = 0,
                 chat: bool = False, desc: str = "generate") -> list[str]:
        from tqdm.auto import tqdm

        torch, tok = self.torch, self.tok
        if chat:
            prompts = [tok.apply_chat_template([{"role": "user", "content": p}] if isinstance(p, str) else p,
                                               add_generation_prompt=True, tokenize=False) for p in prompts]
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        out = []
        bs = self.cfg.batch_size
        for i in tqdm(range(0, len(prompts), bs), desc=desc, leave=False):
            torch.manual_seed(seed * 1_000_003 + i)  # per-batch seed: a resumed run samples the same tokens
            enc = tok(prompts[i:i + bs], return_tensors="pt", padding=True, add_special_tokens=not chat,
                      truncation=True, max_length=self.cfg.max_length)
            kw = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
            if temperature > 0:
                kw["temperature"] = temperature
            else:
                kw.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                gen = self.model.generate(**{k: v.to(self.cfg.device) for k, v in enc.items()}, **kw)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out


class VLLMEngine:
    """vLLM back-end (GPU boxes): same interface; log-likelihoods from `prompt_logprobs`."""

    def __init__(self, cfg: EngineConfig):
        try:
            from vllm import LLM
        except ImportError:
            raise ConfigError("--engine vllm needs the vllm package (pip install vllm on a GPU machine)") from None
        self.cfg = cfg
        self.llm = LLM(model=cfg.model, dtype=cfg.dtype, max_model_len=cfg.max_length + 1)
        self.tok = self.llm.get_tokenizer()

    def loglikelihood(self, pairs: list[tuple[str, str]], desc: str = "loglik") -> list[tuple[float, bool]]:
        from vllm import SamplingParams

        enc = [encode_pair(self.tok, c, k, self.cfg.add_bos) for c, k in pairs]
        prompts = [{"prompt_token_ids": (c + k)[-(self.cfg.max_length + 1):]} for c, k in enc]
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=1), use_tqdm=True)
        res = []
        for (_, k), o in zip(enc, outs):
            plp = o.prompt_logprobs[-len(k):]
            ll = sum(d[t].logprob for d, t in zip(plp, k))
            greedy = all(d[t].rank == 1 for d, t in zip(plp, k))
            res.append((ll, greedy))
        return res

    def generate(self, prompts: list[str], *, max_new_tokens: int = 16, temperature: float = 0.0, seed: int = 0,
                 chat: bool = False, desc: str = "generate") -> list[str]:
        from vllm import SamplingParams

        sp = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed)
        if chat:
            convs = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
            outs = self.llm.chat(convs, sp, use_tqdm=True)
        else:
            outs = self.llm.generate(prompts, sp, use_tqdm=True)
        return [o.outputs[0].text for o in outs]


def build_engine(cfg: EngineConfig):
    return VLLMEngine(cfg) if cfg.engine == "vllm" else HFEngine(cfg)
