"""The shard reader: disjoint rank partitions, deterministic shuffles, exact resume."""

import numpy as np
import pytest

from lmforge.jobs.data import shards
from lmforge.jobs.data.reader import ArrayReader, ShardReader


@pytest.fixture
def dataset(tmp_path):
    """103 sequences of 8 tokens over 3 shards; sequence i holds the value i everywhere."""
    import fsspec

    fs = fsspec.filesystem("file")
    rows = np.repeat(np.arange(103, dtype=np.uint16)[:, None], 8, axis=1)
    entries = shards.write_split(fs, str(tmp_path), "b/train", rows, shard_bytes=40 * 16)
    manifest = {"sequenceLength": 8, "splits": {"train": {"shards": entries}}}
    shards.write_json(fs, str(tmp_path), shards.MANIFEST, manifest)
    assert len(entries) == 3
    return tmp_path.as_uri()


def ids(batch: np.ndarray) -> list[int]:
    return [int(row[0]) for row in batch]


def take(reader: ShardReader, batches: int, size: int = 4) -> list[int]:
    stream = reader.batches(size)
    return [i for _ in range(batches) for i in ids(next(stream))]


def test_random_access_across_shards(dataset):
    reader = ShardReader(dataset)
    assert [int(reader.sequence(i)[0]) for i in (0, 39, 40, 80, 102)] == [0, 39, 40, 80, 102]


def test_ranks_are_disjoint_equal_and_cover_the_epoch(dataset):
    per_rank = [take(ShardReader(dataset, rank=r, world_size=3), 8) for r in range(3)]
    assert all(len(p) == 32 for p in per_rank)
    seen = [i for p in per_rank for i in p]
    assert len(set(seen)) == len(seen)  # no sequence read twice in an epoch


def test_shuffle_is_deterministic_by_seed_and_changes_by_epoch(dataset):
    assert take(ShardReader(dataset, seed=1), 3) == take(ShardReader(dataset, seed=1), 3)
    assert take(ShardReader(dataset, seed=1), 3) != take(ShardReader(dataset, seed=2), 3)
    reader = ShardReader(dataset, world_size=1)
    epochs = take(reader, 50)  # 25 batches of 4 per epoch: 100 of the 103 sequences
    assert len(set(epochs[:100])) == len(set(epochs[100:])) == 100
    assert epochs[:100] != epochs[100:]
    assert reader.epoch == 1


def test_resume_from_state_replays_nothing(dataset):
    straight = take(ShardReader(dataset, seed=5, rank=1, world_size=2), 20)
    first = ShardReader(dataset, seed=5, rank=1, world_size=2)
    head = take(first, 14)  # crosses the epoch boundary (12 batches of 4 per epoch)
    state = first.state_dict()
    second = ShardReader(dataset, seed=5, rank=1, world_size=2)
    second.load_state_dict(state)
    assert head + take(second, 6) == straight


def test_state_from_another_world_size_is_refused(dataset):
    state = ShardReader(dataset, world_size=2).state_dict()
    with pytest.raises(
        ValueError, match="saved for world size 2 and seed 0 cannot resume with world size 4"
    ):
        ShardReader(dataset, world_size=4).load_state_dict(state)


def test_an_incomplete_dataset_is_refused(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"has no manifest\.json: the dataset is not complete"
    ):
        ShardReader(tmp_path.as_uri())


def test_rows_in_memory_and_a_batch_larger_than_a_rank_gets_refused():
    rows = np.arange(5 * 2 * 3).reshape(5, 2, 3)  # fine-tuning rows: inputs and targets
    reader = ArrayReader(rows, "validation", rank=1, world_size=2, seed=3)
    assert len(reader) == 2
    first = next(reader.batches(2))
    assert first.shape == (2, 2, 3) and all(any((r == x).all() for x in rows) for r in first)
    with pytest.raises(ValueError, match="2 sequences per rank, fewer than a batch of 3"):
        reader.batches(3)
