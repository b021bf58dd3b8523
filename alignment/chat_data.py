"""What SFT and DPO share about chat data: rendering a dialogue with the tokenizer's own chat template and
marking its assistant tokens, the shifted (tokens, labels, loss mask) of a sample, the seeded validation split,
and a stage's typed `stage_args`."""
from __future__ import annotations

import random

import numpy as np

from carebot.config import from_dict
from carebot.errors import ConfigError
from carebot.run_config import RunConfig


def render_dialogue(tokenizer, messages: list[dict], only_last: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of the chat-templated dialogue and, per token, whether it belongs to an assistant reply
    (content + end-of-turn; the `assistant` header is template and excluded). `only_last`: mark only the final
    assistant reply (DPO responses). Spans come from rendering prefixes: the text the template adds between
    `messages[:i]` + generation prompt and `messages[:i+1]` is exactly assistant turn i."""
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
        spans.append((len(a), len(b)))
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
