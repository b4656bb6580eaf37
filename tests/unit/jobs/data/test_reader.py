"""The shard reader: disjoint rank partitions, deterministic shuffles, exact resume, on any world
size."""

import itertools

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
    stream = np.array_split(rows.reshape(-1), 7)  # pieces that do not end on a row
    entries = shards.write_stream(fs, str(tmp_path), "b/train", stream, 8, shard_bytes=40 * 16)
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
    epochs = take(reader, 52)  # 208 sequences: every one of the 103 once per epoch, then 2 more
    assert sorted(epochs[:103]) == sorted(epochs[103:206]) == list(range(103))
    assert epochs[:103] != epochs[103:206]
    assert (reader.epoch, reader.position) == (2, 2)


def test_resume_from_state_replays_nothing(dataset):
    straight = take(ShardReader(dataset, seed=5, rank=1, world_size=2), 20)
    first = ShardReader(dataset, seed=5, rank=1, world_size=2)
    head = take(first, 14)  # crosses the epoch boundary (12 batches of 4 per epoch)
    state = first.state_dict()
    second = ShardReader(dataset, seed=5, rank=1, world_size=2)
    second.load_state_dict(state)
    assert head + take(second, 6) == straight


def windows(readers: list[ShardReader], steps: int, size: int, window: int) -> list[list[int]]:
    """What each optimizer step trains on: every rank's batches of a window, in rank order."""
    streams = [r.batches(size, window) for r in readers]
    share = window // len(readers) // size
    return [
        [i for stream in streams for _ in range(share) for i in ids(next(stream))]
        for _ in range(steps)
    ]


def world(dataset, size: int, state=None) -> list[ShardReader]:
    readers = [ShardReader(dataset, seed=7, rank=r, world_size=size) for r in range(size)]
    for reader in readers:
        if state:
            reader.load_state_dict(state)
    return readers


def test_a_step_reads_the_same_sequences_on_any_world_size(dataset):
    """An elastic gang: 2 ranks, then 1, then 4, read what 2 ranks read throughout (a window of
    8 sequences a step, 12 steps an epoch: this crosses into the second epoch)."""
    straight = windows(world(dataset, 2), 15, 4, 8)
    two = world(dataset, 2)
    elastic = windows(two, 5, 4, 8)
    assert two[0].state_dict() == two[1].state_dict() == {
        "epoch": 0, "position": 40, "seed": 7, "total": 103, "block": 3}  # fmt: skip
    one = world(dataset, 1, two[0].state_dict())
    elastic += windows(one, 5, 4, 8)  # two batches of 4 on the one rank
    elastic += windows(world(dataset, 4, one[0].state_dict()), 5, 2, 8)
    assert elastic == straight
    assert straight[0] != straight[1] and len(set(straight[0])) == 8


def test_state_from_another_seed_or_block_is_refused(dataset):
    state = ShardReader(dataset, seed=1).state_dict()
    with pytest.raises(ValueError, match="saved for seed 1, 103 sequences and blocks of 3"
                                         " shards cannot resume with seed 2"):  # fmt: skip
        ShardReader(dataset, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"and blocks of 3 shards cannot resume .* blocks of 1$"):
        ShardReader(dataset, seed=1, block=1).load_state_dict(state)
    del state["block"]  # saved before blocks: one permutation of everything, as block 3 reads
    ShardReader(dataset, seed=1, block=8).load_state_dict(state)


def test_blocks_of_shards_are_read_one_after_the_other(dataset):
    """Blocks of one shard: every epoch reads the 3 shards (40, 40, 23 sequences) whole, one
    after the other in an order of the epoch's, each shuffled in itself."""
    reader = ShardReader(dataset, seed=3, block=1)
    stream = reader.batches(1)
    epochs = [[ids(next(stream))[0] for _ in range(103)] for _ in range(4)]
    firsts = set()
    for order in epochs:
        runs = [sorted(run) for _, run in itertools.groupby(order, key=lambda i: i // 40)]
        assert sorted(runs) == [list(range(0, 40)), list(range(40, 80)), list(range(80, 103))]
        assert order[:40] != sorted(order[:40])
        firsts.add(order[0] // 40)
    assert len(firsts) > 1 and len({tuple(e) for e in epochs}) == 4


def test_an_incomplete_dataset_is_refused(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"has no manifest\.json: the dataset is not complete"
    ):
        ShardReader(tmp_path.as_uri())


def test_rows_in_memory_and_steps_larger_than_the_data():
    rows = np.arange(5 * 2 * 3).reshape(5, 2, 3)  # fine-tuning rows: inputs and targets
    reader = ArrayReader(rows, "validation", rank=1, world_size=2, seed=3)
    assert len(reader) == 2
    first = next(reader.batches(2))
    assert first.shape == (2, 2, 3) and all(any((r == x).all() for x in rows) for r in first)
    # A step larger than the data runs on into the next epoch: from sequence 4 (the first
    # window), three windows of 6 end at sequence 22 of the epochs of 5, epoch 4's third.
    stream = reader.batches(3)
    assert [len(next(stream)) for _ in range(3)] == [3, 3, 3]
    assert (reader.epoch, reader.position) == (4, 2)
    with pytest.raises(ValueError, match="a step's 6 sequences do not split into batches of 2"):
        ArrayReader(rows, rank=0, world_size=4).batches(2, 6)


def test_a_packed_stream_fills_each_shard_and_drops_the_tail(tmp_path):
    import fsspec

    fs, tokens = fsspec.filesystem("file"), np.arange(1003, dtype=np.uint16)
    pieces = np.array_split(tokens, 13)
    entries = shards.write_stream(fs, str(tmp_path), "s", pieces, 10, shard_bytes=200)
    assert [e["sequences"] for e in entries] == [10] * 10  # 200 B: 10 rows of 10 uint16
    manifest = {"sequenceLength": 10, "splits": {"train": {"shards": entries}}}
    shards.write_json(fs, str(tmp_path), shards.MANIFEST, manifest)
    reader = ShardReader(tmp_path.as_uri())
    assert (np.stack([reader.sequence(i) for i in range(100)]).reshape(-1) == tokens[:1000]).all()


def test_remote_shards_stream_through_a_cache_of_two_blocks(dataset, bucket, s3_endpoint, tmp_path):
    """On S3, in blocks of one shard: the batches the local reader gives, with at most two
    shards on disk; the cache folder goes with the reader, and a killed process's at the next
    start."""
    import gc
    import time

    import fsspec

    fsspec.filesystem("s3", endpoint_url=s3_endpoint).put(
        dataset.removeprefix("file://") + "/", f"{bucket}/data", recursive=True
    )
    root = tmp_path / "cache" / "lmforge-shards"
    (root / "999999999-stale").mkdir(parents=True)  # no such process
    local = ShardReader(dataset, seed=4, block=1)
    remote = ShardReader(f"{bucket}/data", seed=4, block=1, endpoint_url=s3_endpoint,
                         cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert remote.cache_bytes == sum(sorted(e["bytes"] for e in local.manifest["splits"]
                                            ["train"]["shards"])[-2:])  # fmt: skip
    assert local.cache_bytes == 0
    (folder,) = root.iterdir()  # the stale one is gone
    held = []
    streams = local.batches(4), remote.batches(4)
    for _ in range(60):  # 240 sequences: over two epochs
        a, b = (next(s) for s in streams)
        assert (a == b).all()
        held.append(len(list(folder.glob("*.arrow"))))
    assert min(held) >= 1 and max(held) <= 2  # 2 once the next block's background fetch is in
    del remote, streams
    deadline = time.monotonic() + 10  # once a background fetch in flight has ended
    while list(root.iterdir()) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert not list(root.iterdir())
