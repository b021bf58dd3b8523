"""DPO: the losses equal their formulas; precomputed reference log-probs == live reference, bitwise; the
reward margin on the training pairs turns positive; PP=2 / TP=2 match TP=PP=1."""
from __future__ import annotations

import math

import pytest
import torch

from alignment.dpo import DPOArgs, dpo_loss
from tests.helpers import metrics, run_stage


def _batch(seed: int = 0, pairs: int = 3, seq: int = 7):
    g = torch.Generator().manual_seed(seed)
    per_token = torch.rand(2 * pairs, seq, generator=g) * 3
    mask = (torch.rand(2 * pairs, seq, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    ref = -torch.rand(2 * pairs, generator=g) * 10
    gt = torch.rand(2 * pairs, generator=g) * 4
    return {"loss_mask": mask, "ref_logps": ref, "gt_rewards": gt}, per_token


def _expected(a: DPOArgs, batch, per_token) -> tuple[float, float]:
    """The textbook formulas, pair by pair in plain Python floats."""
    def sig(x):
        return 1.0 / (1.0 + math.exp(-x))

    rows = []
    for i in range(per_token.shape[0]):
        toks = [(float(per_token[i, t]), float(batch["loss_mask"][i, t])) for t in range(per_token.shape[1])]
        n = sum(m for _, m in toks)
        lp = -sum(l * m for l, m in toks)
        rows.append((lp / n if a.average_log_probs else lp, n))
    losses, sfts, b, eps, s = [], [], a.beta, a.label_smoothing, a.gt_reward_scale
    for k in range(len(rows) // 2):
        (pc, nc), (pr, _) = rows[2 * k], rows[2 * k + 1]
        rc, rr = float(batch["ref_logps"][2 * k]), float(batch["ref_logps"][2 * k + 1])
        gc, gr = float(batch["gt_rewards"][2 * k]), float(batch["gt_rewards"][2 * k + 1])
        h = (pc - rc) - (pr - rr)
        if a.loss == "dpo":
            losses.append(-(1 - eps) * math.log(sig(b * h)) - eps * math.log(sig(-b * h)))
        elif a.loss == "ipo":
            losses.append((h - 1 / (2 * b)) ** 2)
        else:
            p, q = sig(b * h), sig(s * (gc - gr))
            if a.loss == "rpo_sq":
                losses.append((b * h - s * (gc - gr)) ** 2)
            elif a.loss == "rpo_bwd_kl":  # KL(q || p) over {chosen wins, rejected wins}
                losses.append(q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)))
            else:  # KL(p || q)
                losses.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
        sfts.append(-(pc if a.average_log_probs else pc / nc))
    return sum(losses) / len(losses), sum(sfts) / len(sfts)


@pytest.mark.parametrize("kw", [
    dict(loss="dpo"), dict(loss="dpo", label_smoothing=0.2), dict(loss="dpo", average_log_probs=True),
    dict(loss="ipo", beta=0.5), dict(loss="rpo_sq", gt_reward_scale=0.7), dict(loss="rpo_bwd_kl"),
    dict(loss="rpo_fwd_kl", beta=0.3), dict(loss="dpo", sft_loss_weight=0.5, preference_loss_weight=2.0)],
    ids=["dpo", "dpo-ls", "dpo-avg", "ipo", "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl", "dpo+sft"])
def test_losses_equal_reference_formulas(kw):
    a = DPOArgs(**{"beta": 0.1, **kw})
    batch, per_token = _batch()
    loss, logs = dpo_loss(a, batch, per_token)
    pref, sft = _expected(a, batch, per_token)
    assert float(logs["preference_loss"]) == pytest.approx(pref, rel=1e-5, abs=1e-7)
    assert float(logs["sft_loss"]) == pytest.approx(sft, rel=1e-5)
    assert float(loss) == pytest.approx(a.preference_loss_weight * pref + a.sft_loss_weight * sft, rel=1e-5)


def test_rewards_and_accuracy_logged():
    a = DPOArgs(beta=0.1)
    batch, per_token = _batch(seed=3)
    _, logs = dpo_loss(a, batch, per_token)
    lp = -(per_token * batch["loss_mask"]).sum(-1)
    rew = a.beta * (lp - batch["ref_logps"])
    assert float(logs["rewards_chosen"]) == pytest.approx(float(rew[0::2].mean()), rel=1e-6)
    assert float(logs["reward_margin"]) == pytest.approx(float((rew[0::2] - rew[1::2]).mean()), rel=1e-5)
    assert float(logs["reward_accuracy"]) == float((rew[0::2] > rew[1::2]).float().mean())


@pytest.fixture(scope="module")
def dpo_over(tiny_base, init_ckpt, dpo_pairs_file) -> list[str]:
    return tiny_base + [f"data.data_path=[{dpo_pairs_file}]", f"checkpoint.init_from={init_ckpt}",
                        "train.epochs=null", "train.train_steps=6", "optim.lr=1e-3", "optim.min_lr=1e-3",
                        "optim.warmup_ratio=0"]


@pytest.fixture(scope="module")
def precomputed_run(tmp_path_factory, dpo_over):
    """8 pairs, 4 per step: steps 5-6 revisit pairs trained on twice (margins measured on training pairs)."""
    out = tmp_path_factory.mktemp("dpo-pre")
    run_stage("alignment.dpo", "tiny_dpo.yaml", out, dpo_over + [
        "stage_args={beta: 0.1, reference: precomputed, max_pairs: 8}"])
    return out


KEYS = ("loss", "preference_loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy",
        "logps_chosen", "logps_rejected", "grad_norm")


def test_precomputed_reference_equals_live_bitwise(tmp_path, precomputed_run, dpo_over):
    run_stage("alignment.dpo", "tiny_dpo.yaml", tmp_path, dpo_over + [
        "stage_args={beta: 0.1, reference: live, max_pairs: 8}", "train.exit_after_steps=3"])
    pre, live = metrics(precomputed_run)[:3], metrics(tmp_path)
    assert len(live) == 3
    for k in KEYS:
        assert [r[k] for r in live] == [r[k] for r in pre], k  # floats compared exactly
    assert (precomputed_run / "reference_logps.pt").exists() and not (tmp_path / "reference_logps.pt").exists()


def test_reward_margin_turns_positive(precomputed_run):
    m = metrics(precomputed_run)
    assert len(m) == 6
    # step 1: the policy is the reference, so every reward is zero (the two forwards agree)
    assert abs(m[0]["reward_margin"]) < 1e-6 and abs(m[0]["rewards_chosen"]) < 1e-6
    assert m[0]["preference_loss"] == pytest.approx(math.log(2), rel=1e-5)
    late = m[-2:]
    assert all(r["reward_margin"] > 0 for r in late), [r["reward_margin"] for r in m]
    assert sum(r["reward_accuracy"] for r in late) / 2 > 0.5
    assert late[-1]["preference_loss"] < m[0]["preference_loss"]


def _check_layout(tmp_path, precomputed_run, dpo_over, layout):
    run_stage("alignment.dpo", "tiny_dpo.yaml", tmp_path, dpo_over + layout + [
        "stage_args={beta: 0.1, reference: precomputed, max_pairs: 8}", "train.exit_after_steps=3"], nproc=2)
    ref = metrics(precomputed_run)[:3]
    got = metrics(tmp_path)
    assert len(got) == 3
    for k in ("loss", "reward_margin"):
        for a, b in zip([r[k] for r in got], [r[k] for r in ref]):
            assert abs(a - b) <= 1e-4 * max(abs(b), 1e-3), (k, got, ref)


@pytest.mark.slow  # multi-process / cluster run: the slow set (.ci/run runs it)
def test_dpo_pp2_matches_single_process(tmp_path, precomputed_run, dpo_over):
    _check_layout(tmp_path, precomputed_run, dpo_over, ["parallel.pipeline=2"])


@pytest.mark.slow
def test_dpo_tp2_matches_single_process(tmp_path, precomputed_run, dpo_over):
    _check_layout(tmp_path, precomputed_run, dpo_over, ["parallel.tensor=2"])


def test_rpo_without_rewards_is_one_clear_line(tmp_path, tiny_base, dpo_pairs_file, capsys):
    from alignment.dpo import main

    assert main(["--config", "tiny_dpo.yaml", f"output_dir={tmp_path}", *tiny_base,
                 f"data.data_path=[{dpo_pairs_file}]", "stage_args={loss: rpo_sq}"]) == 2
    assert "needs chosen_reward and rejected_reward" in capsys.readouterr().err


def test_long_prompt_is_cut_from_the_left_not_dropped(small_tokenizer_dir, dpo_pairs_file):
    """A pair whose dialogue history fills the window keeps both replies whole behind the SAME prompt, cut from
    the left (BOS kept). Before: the reply fell out of the window and the pair was dropped."""
    from alignment.chat_data import render_dialogue
    from alignment.dpo import tokenize_pairs
    from carebot.tokenizer import load_tokenizer
    from data_tools.sft.formats import Pair, read_pairs

    hf = load_tokenizer(small_tokenizer_dir)
    real = sorted(read_pairs(dpo_pairs_file), key=lambda p: len(p.chosen) + len(p.rejected))
    last, rest = real[0], real[1:9]  # the shortest replies answer, after a long real history
    history = [m for p in rest for m in (p.prompt[0], {"role": "assistant", "content": p.chosen})]
    pair = Pair(prompt=history + last.prompt, chosen=last.chosen, rejected=last.rejected, id="long")
    full = [render_dialogue(hf, pair.prompt + [{"role": "assistant", "content": x}], only_last=True)
            for x in (pair.chosen, pair.rejected)]
    replies = [[t for t, m in zip(ids, mask) if m] for ids, mask in full]
    seq = 4 * max(map(len, replies))
    assert all(len(ids) > 2 * seq for ids, _ in full)  # the history alone is far longer than the window

    rows, stats = tokenize_pairs(hf, [pair], seq, pad=0)
    assert stats["kept"] == 1 and stats["prompt_cut_left"] == 1 and stats["dropped_empty_response"] == 0
    row = rows[0]
    for k, reply in enumerate(replies):  # each reply whole, in the labels where the mask is on
        assert row["labels"][k][row["loss_mask"][k].bool()].tolist() == reply
    n = [int(row["loss_mask"][k].nonzero()[0]) for k in (0, 1)]  # tokens before the first reply label
    assert n[0] == n[1] and torch.equal(row["tokens"][0, :n[0] + 1], row["tokens"][1, :n[1] + 1])  # same prompt
    assert int(row["tokens"][0, 0]) == hf.bos_token_id
    # it is the END of the prompt that stays: the kept prompt tokens are the original's last ones
    start = next(i for i, m in enumerate(full[0][1]) if m)
    assert row["tokens"][0, 1:n[0] + 1].tolist() == full[0][0][start - n[0]:start]
