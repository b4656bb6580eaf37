"""The trainer's view of a dataset: packed sequences by global index, shuffled, split by rank.

Every epoch is a permutation of all sequences drawn from (seed, epoch); rank r of w takes every
w-th sequence of it, so ranks never overlap and all get the same count. The state is just
(epoch, position): restoring it recomputes the permutation and continues, replaying nothing.
Shards are memory-mapped; remote ones are copied to a local cache first.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from lmforge.jobs.data import shards
from lmforge.jobs.storage import filesystem, join


class Sequences:
    """Rows by global index, shuffled per epoch and split by rank; subclasses say what row i is."""

    def __init__(self, total: int, split: str, rank: int, world_size: int, seed: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.total, self.rank, self.world_size, self.seed = total, rank, world_size, seed
        self.per_rank = total // world_size
        if self.per_rank == 0:
            raise ValueError(
                f"split {split!r} has {total} sequences, fewer than {world_size} ranks"
            )
        self.epoch, self.position = 0, 0

    def sequence(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        """Sequences this rank reads per epoch."""
        return self.per_rank

    def _order(self, epoch: int) -> np.ndarray:
        total = self.per_rank * self.world_size
        permutation = np.random.default_rng([self.seed, epoch]).permutation(self.total)
        return permutation[:total][self.rank :: self.world_size]

    def batches(self, batch_size: int, prefetch: int = 4) -> Iterator[np.ndarray]:
        """Endless [batch_size, sequenceLength] batches from the saved position on, read ahead by
        a background thread. The position advances as batches are taken, not as they are read."""
        if batch_size > self.per_rank:
            raise ValueError(
                f"{self.per_rank} sequences per rank, fewer than a batch of {batch_size}"
            )
        return self._batches(batch_size, prefetch)

    def _batches(self, batch_size: int, prefetch: int) -> Iterator[np.ndarray]:
        ahead: queue.Queue = queue.Queue(prefetch)
        stop = threading.Event()

        def produce(epoch: int, position: int) -> None:
            while not stop.is_set():
                order = self._order(epoch)
                while position + batch_size <= len(order) and not stop.is_set():
                    picked = order[position : position + batch_size]
                    position += batch_size
                    ahead.put((epoch, position, np.stack([self.sequence(int(i)) for i in picked])))
                epoch, position = epoch + 1, 0

        thread = threading.Thread(target=produce, args=(self.epoch, self.position), daemon=True)
        thread.start()
        try:
            while True:
                self.epoch, self.position, batch = ahead.get()
                yield batch
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ahead.get_nowait()
                except queue.Empty:
                    thread.join(0.01)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "worldSize": self.world_size}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["worldSize"] != self.world_size or state["seed"] != self.seed:
            raise ValueError(
                f"data position saved for world size {state['worldSize']} and seed {state['seed']}"
                f" cannot resume with world size {self.world_size} and seed {self.seed}"
            )
        self.epoch, self.position = state["epoch"], state["position"]


class ShardReader(Sequences):
    """A Dataset's packed sequences: memory-mapped shards (remote ones copied to a cache)."""

    def __init__(
        self,
        uri: str,
        split: str = "train",
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        endpoint_url: str | None = None,
        cache_dir: str | None = None,
    ):
        fs, root = filesystem(uri, endpoint_url)
        self.manifest = shards.read_manifest(fs, root)
        if self.manifest is None:
            raise FileNotFoundError(f"{uri} has no {shards.MANIFEST}: the dataset is not complete")
        entries = self.manifest["splits"][split]["shards"]
        self.sequence_length = self.manifest["sequenceLength"]
        self._shards = [_open(fs, join(root, e["path"]), e, cache_dir) for e in entries]
        self._ends = np.cumsum([len(s) for s in self._shards])
        total = int(self._ends[-1]) if len(self._ends) else 0
        super().__init__(total, split, rank, world_size, seed)

    def sequence(self, index: int) -> np.ndarray:
        """Sequence `index` of the whole split (0 <= index < total), unshuffled."""
        shard = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[shard - 1]) if shard else 0
        return self._shards[shard][index - start]


class ArrayReader(Sequences):
    """Rows held in memory (fine-tuning examples: [n, 2, length] of inputs and targets)."""

    def __init__(self, rows: np.ndarray, split: str = "train", *, rank=0, world_size=1, seed=0):
        self.rows = rows
        super().__init__(len(rows), split, rank, world_size, seed)

    def sequence(self, index: int) -> np.ndarray:
        return self.rows[index]


class _Shard:
    def __init__(self, path: str):
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        tokens = table.column("tokens").combine_chunks()
        width = tokens.type.list_size
        self.rows = tokens.values.to_numpy(zero_copy_only=True).reshape(-1, width)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, row: int) -> np.ndarray:
        return self.rows[row]


def _open(fs, path: str, entry: dict[str, Any], cache_dir: str | None) -> _Shard:
    if isinstance(fs, LocalFileSystem):
        return _Shard(path)
    cache = cache_dir or os.path.join(tempfile.gettempdir(), "lmforge-shards")
    local = os.path.join(cache, entry["digest"].replace(":", "-") + ".arrow")
    if not os.path.exists(local):  # content-addressed: a cached copy is always the right one
        os.makedirs(cache, exist_ok=True)
        fs.get_file(path, local + ".part")
        os.replace(local + ".part", local)
    return _Shard(local)
