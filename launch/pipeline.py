"""The stage graph of the CareBot model pipeline, defined once: Stable CPT -> Boost CPT -> convert -> SFT ->
DPO -> convert -> eval. `carebot launch pipeline` submits it as SLURM jobs chained with afterok; `carebot demo`
runs the same chain on CPU with each training stage's tiny twin recipe. Each training stage starts from the
checkpoint of the training stage before it; a convert exports the training stage before it; eval scores the
model of the convert before it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carebot.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """A pipeline stage: its carebot command, its paper recipe and CPU twin, and its default SLURM layout."""
    command: str
    recipe: str | None
    tiny_recipe: str | None
    nodes: int
    gpus_per_node: int
    time: str

    @property
    def trains(self) -> bool:
        return self.recipe is not None


# The paper's layouts (CareBot Sec. 3 / App. C); convert and eval are single-task jobs.
STAGES: dict[str, StageSpec] = {
    "stable": StageSpec("pretrain", "stable_cpt.yaml", "tiny_stable_cpt.yaml", 3, 8, "7-00:00:00"),
    "boost": StageSpec("pretrain", "boost_cpt.yaml", "tiny_boost_cpt.yaml", 3, 8, "3-00:00:00"),
    "sft": StageSpec("sft", "sft.yaml", "tiny_sft.yaml", 1, 8, "2-00:00:00"),
    "dpo": StageSpec("dpo", "dpo.yaml", "tiny_dpo.yaml", 1, 8, "1-00:00:00"),
    "convert": StageSpec("convert", None, None, 1, 0, "04:00:00"),
    "eval": StageSpec("eval", None, None, 1, 1, "12:00:00"),
}
PIPELINE = ["stable", "boost", "convert", "sft", "dpo", "convert", "eval"]


@dataclass(frozen=True)
class Step:
    """One stage of a planned chain; `source` is the index of the step whose output this one reads (the
    checkpoint a training stage starts from, the checkpoint a convert exports, the model eval scores)."""
    index: int
    stage: str
    spec: StageSpec
    source: int | None


def plan(stages: list[str]) -> list[Step]:
    """The chain for `stages` (names from STAGES, in order), each step wired to its source."""
    bad = [x for x in stages if x not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)} (known: {', '.join(STAGES)})")
    steps: list[Step] = []
    last_train = last_convert = None
    for i, name in enumerate(stages):
        spec = STAGES[name]
        if spec.trains:
            source, last_train = last_train, i
        elif name == "convert":
            if last_train is None:
                raise ConfigError("pipeline: convert needs a training stage before it")
            source, last_convert = last_train, i
        else:
            if last_convert is None and last_train is None:
                raise ConfigError("pipeline: eval needs a converted model before it")
            source = last_convert if last_convert is not None else last_train
        steps.append(Step(i, name, spec, source))
    return steps


def checkpoint_dir(run_dir: str | Path, keep_best: bool) -> Path:
    """Where the next stage takes a training run's weights from: its best checkpoint when it keeps one."""
    return Path(run_dir) / ("best" if keep_best else "checkpoints")
