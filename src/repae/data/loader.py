"""Deterministic, resumable, rank-sharded data loading.

``ResumableSampler`` yields dataset indices whose order depends only on ``(seed, epoch)``. The
*global* batch ``k`` of an epoch is ``perm[k*G:(k+1)*G]`` with ``G = batch_size * world_size``;
rank ``r`` takes the contiguous slice ``[r*batch_size:(r+1)*batch_size]`` of it. Hence a
``world_size``-process run sees exactly the global batches of a 1-process run with batch ``G``,
and ``state_dict()`` (epoch, position in global batches) restores the stream exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    """Per-rank index stream over global batches of ``batch_size * world_size``.

    Args:
        num_items: dataset length.
        batch_size: per-rank batch size.
        shuffle: random permutation per epoch (``torch.randperm`` seeded by ``seed`` and epoch).
        seed: base seed.
        drop_last: drop the incomplete last global batch (otherwise it is split as evenly as
            the rank slices allow; trailing ranks may get fewer items).
        rank, world_size: this process and the number of processes.

    Iteration runs from the current ``position`` (in global batches) to the end of the epoch and
    then advances ``epoch`` and resets ``position``. Call :meth:`set_epoch` to jump.
    """

    def __init__(self, num_items: int, *, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1, micro_batches: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if batch_size % micro_batches:
            raise ValueError(f"batch_size {batch_size} is not divisible by micro_batches {micro_batches}; pass a batch_size "
                             "that is a multiple of micro_batches (train.grad_accum)")
        # With gradient accumulation the global batch is cut into `micro_batches` global
        # micro-batches and rank r takes its slice of EACH, so micro-batch m on every rank belongs
        # to the same global micro-batch m as in a 1-process run.
        self.micro_batches = micro_batches
        self.num_items, self.batch_size, self.shuffle, self.seed = num_items, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size
        self.epoch = 0
        self.position = 0  # global batches already consumed in this epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_items, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=g)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.position) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation(self.epoch)
        g = self.global_batch
        local = self.batch_size // self.micro_batches  # this rank's part of one global micro-batch
        while self.position < self.batches_per_epoch():
            end = min((self.position + 1) * g, self.num_items)
            for m in range(self.micro_batches):
                start = self.position * g + m * (g // self.micro_batches) + self.rank * local
                chunk = perm[start:min(start + local, end)]
                if m == self.micro_batches - 1:
                    self.position += 1  # advanced before the last yield: state_dict() points past it
                yield from chunk.tolist()
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.seed = int(state.get("seed", self.seed))


def build_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` driven by a :class:`ResumableSampler` (``loader.sampler``).

    Note on resuming with ``num_workers > 0``: workers prefetch, so the sampler's position runs
    ahead of the batches the caller consumed. Save ``{"epoch", "position": batches consumed}``
    from the training loop (or use ``num_workers=0``) to resume exactly.
    """
    sampler = ResumableSampler(len(dataset), batch_size=batch_size, shuffle=shuffle, seed=seed,
                               drop_last=drop_last, rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=False, persistent_workers=False, pin_memory=False)


def dataset_to_tensor(dataset: Dataset, *, batch_size: int = 512, progress: bool = False):
    """Materialise a (small) dataset as ``(uint8 [N, 3, H, W], int64 [N])`` tensors."""
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    xs, ys = [], []
    for x, y in tqdm(loader, desc="loading", disable=not progress):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)
