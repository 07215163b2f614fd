"""Process set-up for one code path from a CPU laptop to multi-node GPUs.

Multi-process runs go through ``torch.distributed`` + ``DistributedDataParallel`` (gloo on CPU,
NCCL on GPUs). Launch with ``torchrun --nproc_per_node N -m repae.cli train ...`` or
``accelerate launch -m repae.cli train ...``; both set RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR, which :func:`setup_distributed` reads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Engine:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mixed_precision: str  # no | bf16 | fp16

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """Autocast context for forwards; fp32 islands (normaliser, losses) opt out themselves."""
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.mixed_precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def wrap(self, module: nn.Module, *, find_unused: bool = False) -> nn.Module:
        """DDP-wrap a trainable module when running several processes (``find_unused`` for modules
        some of whose parameters a recipe never uses, e.g. the VAE decoder without L_REG)."""
        if not self.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        with warnings.catch_warnings():  # torch >= 2.14 renames the flag; the old one works on all versions
            warnings.simplefilter("ignore", FutureWarning)
            return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False,
                                                       find_unused_parameters=find_unused)

    def mean_scalars(self, values: dict[str, float]) -> dict[str, float]:
        """Average a dict of python floats over processes in ONE collective (style guide 17)."""
        if not values:
            return {}
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._coll_device)
        if self.distributed:
            dist.all_reduce(t)
            t /= self.world_size
        return dict(zip(keys, t.tolist()))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def _coll_device(self) -> torch.device:
        return self.device if (self.distributed and dist.get_backend() == "nccl") else torch.device("cpu")


def setup_distributed(mixed_precision: str = "no", *, device: str | None = None,
                      timeout_min: float = 10.0) -> Engine:
    """Initialise torch.distributed from the launcher's environment (no-op for one process).

    ``timeout_min`` bounds every collective: a rank that stops answering (a dead node whose sockets
    never close, a hung process) makes the others fail after that long instead of torch's default
    30 min (``train.dist_timeout_min``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend, timeout = "nccl" if dev.type == "cuda" else "gloo", timedelta(minutes=timeout_min)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if attempt != "0" and "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ:
            # An elastic restart (torchrun --max-restarts) reuses the launcher's store, where the process group of
            # the failed attempt left its peers' addresses: a restarted worker that reads its peer's key before the
            # peer rewrites it dials a dead port ("Connection refused", measured here on gloo), and every restart
            # can fail that way. A prefix per attempt keeps the attempts' keys apart.
            agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                                  is_master=rank == 0 and not agent_store, timeout=timeout)
            dist.init_process_group(backend, store=dist.PrefixStore(f"repae/attempt_{attempt}", store),
                                    rank=rank, world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    if mixed_precision not in ("no", "bf16", "fp16"):
        from repae.errors import ConfigError

        raise ConfigError(f"train.mixed_precision must be no, bf16 or fp16, got '{mixed_precision}'")
    if mixed_precision == "fp16" and dev.type == "cpu" and not cpu_has_native_fp16() and rank == 0:
        logging.getLogger("repae.train").warning(
            "train.mixed_precision=fp16 on a CPU without AVX512-FP16 / AMX-FP16: convolutions run ~60x slower than "
            "fp32 here (measured on an AMD EPYC with AVX512-BF16); use train.mixed_precision=bf16 (or no) on this CPU")
    return Engine(rank=rank, world_size=world, local_rank=local_rank, device=dev, mixed_precision=mixed_precision)


def cpu_has_native_fp16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes fp16 natively (x86 ``avx512_fp16`` / ``amx_fp16`` flags, or any ARM CPU with
    ``fphp``/``asimdhp``). Without it, oneDNN's fp16 convolution takes a reference path: one 3x3 conv at
    64 channels, 32x32, batch 64 took 4.68 s in fp16 against 0.069 s in fp32 (1 thread, 2026-12-06).
    Unknown (no cpuinfo file) counts as native, so no warning is given on a guess."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return True
    flags = set(text.split())
    return bool(flags & {"avx512_fp16", "amx_fp16", "fphp", "asimdhp"})


def abort_distributed(err: BaseException) -> None:
    """A rank that fails tells the others: tear its process group down, so that their next (or
    current) collective fails at once instead of waiting for the timeout; then the caller re-raises."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    logging.getLogger("repae.train").error("rank %d failed (%s: %s); stopping the process group so that every "
                                           "rank stops", dist.get_rank(), type(err).__name__, str(err)[:200])
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, micro-batch): per-step reseeding (EDM2)
    makes a resumed run bit-identical to an uninterrupted one and the draws independent of the
    number of processes (each rank slices the global draw)."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 1_000_003 + step * 1_009 + micro) % (2**63 - 1))
    return g
