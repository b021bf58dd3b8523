"""What SFT and DPO share about chat data: rendering a dialogue with the tokenizer's own chat template and
marking its assistant tokens, the shifted (tokens, labels, loss mask) of a sample, the seeded validation split,
and a stage's typed `stage_args`."""
from __future__ import annotations

import random

import numpy as np

from carebot.config import from_dict
from carebot.errors import ConfigError
from carebot.run_config import RunConfig


def use_chat_template(hf, choice: str | None, where: str) -> str:
    """Give `hf` (in memory only: never the model's tokenizer files) the chat template SFT / DPO render with:
    the one named by `stage_args.chat_template` (llama3 | chatml | a Jinja file), else the tokenizer's own. A
    tokenizer with none (a base model) and no choice is a ConfigError: no template is ever guessed. Returns
    and prints what was used (the run's config.yaml records the choice)."""
    from pathlib import Path

    from carebot.tokenizer import CHAT_TEMPLATES

    if choice:
        if choice in CHAT_TEMPLATES:
            hf.chat_template, used = CHAT_TEMPLATES[choice], f"{choice} (stage_args.chat_template)"
        elif Path(choice).is_file():
            hf.chat_template, used = Path(choice).read_text(encoding="utf-8"), f"{choice} (stage_args.chat_template)"
        else:
            raise ConfigError(f"stage_args.chat_template={choice!r}: one of {', '.join(CHAT_TEMPLATES)} or a Jinja file")
    elif getattr(hf, "chat_template", None):
        used = "the tokenizer's own"
    else:
        raise ConfigError(f"{where}: the tokenizer has no chat template (a base model?); name one with "
                          f"stage_args.chat_template={'|'.join(CHAT_TEMPLATES)}|FILE.jinja")
    print(f"[carebot] chat template: {used}", flush=True)
    return used


def render_dialogue(tokenizer, messages: list[dict], only_last: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of the chat-templated dialogue and, per token, whether it belongs to an assistant reply
    (content + end-of-turn; the `assistant` header is template and excluded, and so is whitespace the template
    puts after the end-of-turn token, like ChatML's newline). `only_last`: mark only the final assistant reply
    (DPO responses). Spans come from rendering prefixes: the text the template adds between `messages[:i]` +
    generation prompt and `messages[:i+1]` is exactly assistant turn i."""
    def text(msgs, gen=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = text(messages)
    spans = []
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (only_last and i != last):
            continue
        a, b = text(messages[:i], gen=True), text(messages[:i + 1])
        if not full.startswith(b) or not b.startswith(a):
            raise ConfigError("the tokenizer's chat template does not render dialogues prefix by prefix; "
                              "SFT loss masking needs a template where each turn appends text")
        spans.append((len(a), len(a) + len(b[len(a):].rstrip())))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = [any(a <= s < b for a, b in spans) for s, _ in offsets]
    return list(ids), mask


def shift(ids: list[int], mask: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, labels, loss_mask): position t predicts ids[t+1], kept when ids[t+1] is an assistant token."""
    ids_a = np.asarray(ids, dtype=np.int64)
    return ids_a[:-1], ids_a[1:], np.asarray(mask[1:], dtype=np.float32)


def split_valid(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then the first `fraction` (at least one item when fraction > 0) is validation."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(fraction * len(items))) if fraction > 0 else 0
    return [items[i] for i in order[n_valid:]], [items[i] for i in order[:n_valid]]


def stage_args(cfg: RunConfig, cls):
    return from_dict(cls, dict(cfg.stage_args), prefix="stage_args.")
