"""Process-group and megatron parallel-state setup, from torchrun or SLURM environment variables."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state as mpu
from megatron.core import tensor_parallel

from pretrain import megatron_cpu
from carebot.errors import ConfigError
from carebot.run_config import ParallelConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_ranks() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun (RANK...) or srun-per-task (SLURM_PROCID...)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def init(parallel: ParallelConfig, seed: int) -> None:
    """Init torch.distributed (nccl on GPU, gloo on CPU), megatron TP/PP/DP groups and model-parallel RNG."""
    megatron_cpu.apply()  # no-op when CUDA is present
    rank, world, local_rank = env_ranks()
    mp = parallel.tensor * parallel.pipeline
    if world % mp:
        raise ConfigError(f"world size {world} is not divisible by tensor x pipeline = {parallel.tensor} x "
                          f"{parallel.pipeline}")
    if not dist.is_initialized():
        # A single process that no launcher started gets a port of its own, without writing it into os.environ:
        # a MASTER_PORT left there would be inherited by every child (tests, `carebot experiment`) and collide.
        init_method = "env://"
        if world == 1 and "MASTER_ADDR" not in os.environ:
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world,
                                init_method=init_method, timeout=timedelta(minutes=30))
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(tensor_model_parallel_size=parallel.tensor,
                                      pipeline_model_parallel_size=parallel.pipeline)
    seed_all(seed)


def seed_all(seed: int) -> None:
    # Same seed on every rank: megatron DDP does not broadcast initial weights, so CPU-initialised
    # weights must be drawn identically everywhere; TP-specific streams come from the RNG tracker.
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def teardown() -> None:
    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def is_logging_rank() -> bool:
    """The rank that holds the loss: last pipeline stage, first TP and DP rank."""
    return (mpu.is_pipeline_last_stage() and mpu.get_tensor_model_parallel_rank() == 0
            and mpu.get_data_parallel_rank() == 0)
