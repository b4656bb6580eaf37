"""The trainer's view of a dataset: packed sequences by global index, shuffled, split by rank.

Every epoch is a permutation of all sequences drawn from (seed, epoch); the epochs, one after
the other, are read in windows of one optimizer step's global batch, and rank r of w reads the
r-th of w equal slices of each window. Every sequence is read once per epoch, and what a step
trains on does not depend on the world size, only on (seed, epoch, position), where position
counts the sequences of the epoch every rank together has read. Restoring that
state recomputes the permutation and continues, replaying nothing, on any world size whose ranks
divide the window: an elastic gang that shrinks or grows reads on where it stopped. Shards are
memory-mapped; remote ones are copied to a local cache first.
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
        if total < world_size:
            raise ValueError(
                f"split {split!r} has {total} sequences, fewer than {world_size} ranks"
            )
        self.total, self.rank, self.world_size, self.seed = total, rank, world_size, seed
        self.epoch, self.position = 0, 0

    def sequence(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        """Sequences this rank reads per epoch, at most."""
        return self.total // self.world_size

    def batches(
        self, batch_size: int, window: int | None = None, prefetch: int = 4
    ) -> Iterator[np.ndarray]:
        """Endless [batch_size, sequenceLength] batches of this rank from the saved position
        on, read ahead by a background thread. `window`: the sequences all ranks read per
        optimizer step (batch_size x world size x accumulation; one batch per rank when unset).
        The position advances by a window once this rank has taken its last batch of it."""
        window = window or batch_size * self.world_size
        if window % (batch_size * self.world_size):
            raise ValueError(
                f"a step's {window} sequences do not split into batches of {batch_size} on"
                f" {self.world_size} ranks"
            )
        return self._batches(batch_size, window, prefetch)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.total)

    def _batches(self, batch_size: int, window: int, prefetch: int) -> Iterator[np.ndarray]:
        ahead: queue.Queue = queue.Queue(prefetch)
        stop = threading.Event()
        share = window // self.world_size

        def produce(epoch: int, position: int) -> None:
            order = self._order(epoch)
            while not stop.is_set():
                picked: list[int] = []  # one window; it runs on into the next epoch if need be
                while len(picked) < window:
                    taken = order[position : position + window - len(picked)]
                    picked += taken.tolist()
                    position += len(taken)
                    if position == self.total:
                        epoch, position = epoch + 1, 0
                        order = self._order(epoch)
                mine = picked[self.rank * share :][:share]
                for start in range(0, share, batch_size):
                    if stop.is_set():
                        return
                    rows = np.stack([self.sequence(i) for i in mine[start : start + batch_size]])
                    last = start + batch_size == share
                    # Mid-window, the state is the window's start: a step is all or nothing.
                    ahead.put(((epoch, position) if last else None, rows))

        thread = threading.Thread(target=produce, args=(self.epoch, self.position), daemon=True)
        thread.start()
        try:
            while True:
                state, batch = ahead.get()
                if state:
                    self.epoch, self.position = state
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
                "total": self.total}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state.get("total", self.total) != self.total:
            raise ValueError(
                f"data position saved for seed {state['seed']} and {state.get('total')}"
                f" sequences cannot resume with seed {self.seed} and {self.total} sequences"
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
