"""Which clips each training step takes, for the loops that train on clips (WaveGlow, the ASR):
resumable by (epoch, position), a pure function of the seed, so a resumed run takes the batches
an uninterrupted one would."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class Order:
    """Which clips each step takes: a seeded permutation per epoch, this rank's share of it, in
    batches (the last incomplete one dropped, as NVIDIA's DataLoader). Resumable by (epoch, position)."""
    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    epoch: int = 0
    position: int = 0  # batches of this epoch already taken

    def batches(self) -> list[list[int]]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        mine = perm[self.rank::self.world][: self.n // self.world]  # every rank the same count
        return [mine[i:i + self.batch_size] for i in range(0, len(mine) - self.batch_size + 1, self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self.position:]:
            yield batch

    def advance(self) -> None:
        self.position += 1

    def next_epoch(self) -> None:
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
