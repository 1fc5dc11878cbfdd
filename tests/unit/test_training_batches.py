"""Per-epoch batches for datasets that are not tensors: the same order as tensors get, so resumes line up."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from shipyard.params import TrainParams
from shipyard.training.distributed import World
from shipyard.training.loop import Batches

CPU = torch.device("cpu")


class Rows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A map-style dataset, as a recipe reading files would write (collated by a DataLoader)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(i), -float(i)]), torch.tensor(i)


def _ids(batches: Batches, epoch: int, skip: int) -> list[list[int]]:
    return [batch[1].tolist() for batch in batches.epoch(epoch, skip)]


def test_a_map_style_dataset_gets_the_tensor_datasets_batches_and_a_resume_skips_exactly_the_done_ones() -> None:
    params = TrainParams(batch_size=4, seed=7)
    rows = Batches(Rows(11), params, World(0, 1, CPU))
    tensors = Batches(TensorDataset(torch.arange(11.0).repeat(2, 1).T, torch.arange(11)), params, World(0, 1, CPU))

    whole = _ids(rows, 3, 0)
    assert whole == _ids(tensors, 3, 0)
    assert [len(b) for b in whole] == [4, 4, 3] and sorted(i for b in whole for i in b) == list(range(11))
    assert _ids(rows, 3, 2) == whole[2:]  # resumed after two steps: the third batch, as the whole run saw it
    assert _ids(rows, 4, 0) != whole  # each epoch is shuffled anew
    first = next(iter(rows.epoch(3, 0)))
    assert first[0].tolist() == [[float(i), -float(i)] for i in whole[0]]  # collated rows, features with labels


def test_each_rank_gets_its_disjoint_share_of_every_global_batch() -> None:
    params = TrainParams(batch_size=4, seed=1)
    whole = _ids(Batches(Rows(10), params, World(0, 1, CPU)), 0, 0)
    shares = [_ids(Batches(Rows(10), params, World(rank, 2, CPU)), 0, 0) for rank in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*shares, strict=True)] == [sorted(b) for b in whole]
    assert shares[0] == [b[0::2] for b in whole] and shares[1] == [b[1::2] for b in whole]
