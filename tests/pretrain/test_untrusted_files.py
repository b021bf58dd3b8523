"""Nothing a user hands in may run code: a payload planted in every file the stack unpickles (a checkpoint's
common.pt and torch_dist `.metadata`, megatron's own common-state loader, DPO's reference log-probs) is refused
and never runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from carebot.errors import CareBotError


class Payload:
    """Unpickling this creates `marker`: proof that the loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_checkpoint(tmp_path, where: str = "common.pt"):
    """A checkpoint dir in megatron's torch_dist layout with a payload in `where` (common.pt or .metadata)."""
    import pickle

    from torch.distributed.checkpoint.metadata import Metadata

    it = tmp_path / "ckpt" / "iter_0000001"
    it.mkdir(parents=True)
    (it / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                                  "common_backend": "torch", "common_backend_version": 1}))
    marker = tmp_path / "PWNED"
    evil = where == "common.pt"
    torch.save({"carebot": {"iteration": 1, **({"evil": Payload(marker)} if evil else {})}}, it / "common.pt")
    with open(it / ".metadata", "wb") as f:
        pickle.dump(Payload(marker) if not evil else Metadata(state_dict_metadata={}, storage_data={}), f)
    (tmp_path / "ckpt" / "latest").write_text(it.name)
    return it, marker


def test_checkpoint_metadata_never_unpickles_code(tmp_path):
    from pretrain import checkpoint as ckpt

    it, marker = planted_checkpoint(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="refusing to unpickle"):
        ckpt.load_meta(it)
    assert not marker.exists()
    assert issubclass(ckpt.CheckpointError, CareBotError)


def test_megatron_common_state_loader_is_safe_too(tmp_path):
    from megatron.core import dist_checkpointing

    it, marker = planted_checkpoint(tmp_path)
    with pytest.raises(Exception):
        dist_checkpointing.load_common_state_dict(str(it))
    assert not marker.exists()


def test_dist_metadata_never_unpickles_code(tmp_path):
    from pretrain import checkpoint as ckpt

    it, marker = planted_checkpoint(tmp_path, ".metadata")
    with pytest.raises(ckpt.CheckpointError, match=r"refusing to unpickle (builtins|io)\.open"):
        ckpt.read_dist_metadata(it)
    assert not marker.exists()
    good, _ = planted_checkpoint(tmp_path / "good")  # a plain Metadata object reads fine
    assert ckpt.read_dist_metadata(good).state_dict_metadata == {}


@pytest.mark.parametrize("where", ["common.pt", ".metadata"])
def test_convert_of_a_crafted_checkpoint_is_one_line_and_runs_nothing(tmp_path, where):
    it, marker = planted_checkpoint(tmp_path, where)
    p = subprocess.run([sys.executable, "-m", "carebot.cli", "convert", "megatron-to-hf", "--megatron",
                        str(it.parent), "--out", str(tmp_path / "hf")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "refusing to unpickle" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_dpo_reference_table_is_recomputed_not_unpickled(tmp_path, capsys):
    from alignment.dpo import load_reference_table

    marker = tmp_path / "PWNED"
    path = tmp_path / "reference_logps.pt"
    torch.save({"fingerprint": "fp", "train": Payload(marker)}, path)
    assert load_reference_table(path, "fp") is None and not marker.exists()
    assert "recomputing" in capsys.readouterr().out
    torch.save({"fingerprint": "fp", "train": torch.ones(3)}, path)  # a real table loads
    assert torch.equal(load_reference_table(path, "fp")["train"], torch.ones(3))
    assert load_reference_table(path, "other run") is None
