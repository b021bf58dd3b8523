import pytest

from carebot.errors import ConfigError
from carebot.run_config import load_config
from pretrain.model import flops_per_token, num_params, padded_vocab_size


def test_recipes_inherit_and_state_only_differences():
    stable = load_config("stable_cpt.yaml")
    boost = load_config("boost_cpt.yaml")
    assert (stable.optim.lr, stable.train.train_steps, stable.optim.warmup_ratio) == (8e-6, 18000, 0.1)
    assert (boost.optim.lr, boost.train.train_steps, boost.optim.warmup_ratio) == (2e-6, 7000, 0.1)
    assert boost.checkpoint.init_from == "runs/stable_cpt/checkpoints" and not boost.checkpoint.init_optimizer
    assert stable.data.seq_length == boost.data.seq_length == 4096
    # ~4M-token global batches on 24 GPUs (TP4 x PP2 x DP3)
    assert abs(stable.train.global_batch_size * 4096 - 4e6) / 4e6 < 0.05
    assert stable.train.global_batch_size % 3 == 0 and stable.parallel.tensor * stable.parallel.pipeline == 8
    tiny = load_config("tiny_boost_cpt.yaml", ["train.train_steps=3"])
    assert tiny.model.hidden_size == 64 and tiny.train.train_steps == 3 and tiny.name == "tiny_boost_cpt"


def test_overrides_are_typed():
    c = load_config(None, ["train.train_steps=7", "optim.lr=1e-3", "train.tensorboard=false"])
    assert c.train.train_steps == 7 and c.optim.lr == 1e-3 and c.train.tensorboard is False
    with pytest.raises(ConfigError, match="train.train_steps: expected int"):
        load_config(None, ["train.train_steps=1.5"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config("no_such_recipe.yaml")


def test_llama3_8b_shape_counts():
    m = load_config("stable_cpt.yaml").model
    assert num_params(m, 128256) == 8_030_261_248  # Meta-Llama-3-8B
    assert padded_vocab_size(128256, 128, 4) == 128512
    # 6N-style sanity: FLOPs/token within 20% of 6 x params at seq 4096
    assert 1.0 < flops_per_token(m, 128256, 4096) / (6 * 8.03e9) < 1.2


def test_several_recipes_merge_and_overrides_after_config(tmp_path):
    frag = tmp_path / "stable_blend.yaml"
    frag.write_text("data:\n  data_path: [0.9, /x/a, 0.1, /x/b]\n")
    # argparse's nargs="+" hands the overrides in with the recipes: they must still apply, in order
    c = load_config(["tiny_stable_cpt.yaml", str(frag), "train.train_steps=3"], ["optim.lr=0.5"])
    assert c.data.data_path == [0.9, "/x/a", 0.1, "/x/b"] and c.model.hidden_size == 64
    assert c.train.train_steps == 3 and c.optim.lr == 0.5


@pytest.mark.parametrize("override,message", [
    ("train.train_steps=0", "train.train_steps=0: must be >= 1"),
    ("train.precision=fp7", "train.precision='fp7': one of auto, bf16, fp32"),
    ("stage=xyz", "stage='xyz': one of cpt, sft, dpo"),
    ("data.seq_length=0", "data.seq_length=0: must be >= 1"),
    ("checkpoint.save_interval=0", "checkpoint.save_interval=0: must be >= 1"),
    ("train.log_interval=0", "train.log_interval=0: must be >= 1"),
    ("optim.warmup_ratio=1.5", "optim.warmup_ratio=1.5: must be in [0, 1]"),
    ("data.split=99,1", "data.split='99,1': three non-negative"),
    ("optim.decay_style=cosinus", "optim.decay_style='cosinus': one of"),
])
def test_bad_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny_stable_cpt.yaml", [override])
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("command,recipe", [("pretrain", "tiny_stable_cpt.yaml"), ("sft", "tiny_sft.yaml"),
                                            ("dpo", "tiny_dpo.yaml")])
def test_bad_value_through_the_cli_is_exit_2_one_line_before_torch_loads(tmp_path, command, recipe):
    """The recipe is validated before the stage imports torch / megatron-core: the error comes in well under
    3 s (it took 8-22 s when the imports came first)."""
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "carebot.cli", command, "--config", recipe,
                        f"output_dir={tmp_path}", "train.precision=fp7"], capture_output=True, text=True, timeout=300)
    secs = time.monotonic() - t0
    assert p.returncode == 2 and "Traceback" not in p.stderr
    errors = [l for l in p.stderr.splitlines() if "error:" in l]
    assert errors == [f"carebot {command}: error: train.precision='fp7': one of auto, bf16, fp32"]
    imported = {l.split("|")[-1].strip() for l in p.stderr.splitlines() if l.startswith("import time:")}
    assert "torch" not in imported and "megatron.core" not in imported
    assert secs < 3, f"{secs:.1f} s"
