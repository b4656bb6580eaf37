"""The trainer's view of a dataset: packed sequences by global index, shuffled, split by rank.

Every epoch is an order of all sequences drawn from (seed, epoch), shard-aware: the shards are
shuffled, taken in blocks of `block` shards, and the sequences of each block shuffled together
(one block, the default for data held in memory, is a plain permutation of everything). The
epochs, one after the other, are read in windows of one optimizer step's global batch, and rank
r of w reads the r-th of w equal slices of each window. Every sequence is read once per epoch,
and what a step trains on does not depend on the world size, only on (seed, block, epoch,
position), where position counts the sequences of the epoch every rank together has read.
Restoring that state recomputes the order and continues, replaying nothing, on any world size
whose ranks divide the window: an elastic gang that shrinks or grows reads on where it stopped.

Shards are memory-mapped. Remote ones stream through a bounded local cache: a rank holds the
shards of the block it reads and of the next one, fetched in the background while it reads,
and deletes the others; so its disk is at most two blocks, whatever the size of the split.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from lmforge.jobs.data import shards
from lmforge.jobs.storage import filesystem, join
from lmforge.operator.api.training import SHARD_CACHE_ENV


class Sequences:
    """Rows by global index, shuffled per epoch and split by rank; subclasses say what row i is.
    `sizes`: the rows of each shard, in index order; `block`: shards shuffled together."""

    def __init__(
        self, sizes: list[int], split: str, rank: int, world_size: int, seed: int, block: int = 1
    ):
        total = sum(sizes)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if total < world_size:
            raise ValueError(
                f"split {split!r} has {total} sequences, fewer than {world_size} ranks"
            )
        self.total, self.rank, self.world_size, self.seed = total, rank, world_size, seed
        self.block = min(block, len(sizes))  # blocks of more shards than there are: one block
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)])
        self.epoch, self.position = 0, 0

    def sequence(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _ahead(self, epoch: int, position: int, window: int) -> None:
        """Called before a window is read from (epoch, position): where rows are remote, get
        the window's shards and start fetching what comes next."""

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

    def _blocks(self, epoch: int) -> tuple[np.random.Generator, list[np.ndarray]]:
        """The shards of each block of `epoch`, in reading order, and the generator that goes
        on to shuffle their rows."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.block == len(self._sizes):
            return rng, [np.arange(len(self._sizes))]
        order = rng.permutation(len(self._sizes))
        return rng, [order[i : i + self.block] for i in range(0, len(order), self.block)]

    def _order(self, epoch: int) -> np.ndarray:
        rng, blocks = self._blocks(epoch)
        if len(blocks) == 1:
            return rng.permutation(self.total)
        rows = [np.concatenate([np.arange(*self._starts[s : s + 2]) for s in b]) for b in blocks]
        return np.concatenate([rng.permutation(r) for r in rows])

    def _batches(self, batch_size: int, window: int, prefetch: int) -> Iterator[np.ndarray]:
        ahead: queue.Queue = queue.Queue(prefetch)
        stop = threading.Event()
        share = window // self.world_size

        def produce(epoch: int, position: int) -> None:
            order = self._order(epoch)
            while not stop.is_set():
                self._ahead(epoch, position, window)
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
                "total": self.total, "block": self.block}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A position saved before blocks existed was in one permutation of everything.
        saved = (
            state["seed"],
            state.get("total", self.total),
            state.get("block", len(self._sizes)),
        )
        if saved != (self.seed, self.total, self.block):
            raise ValueError(
                f"data position saved for seed {saved[0]}, {saved[1]} sequences and blocks of"
                f" {saved[2]} shards cannot resume with seed {self.seed}, {self.total} sequences"
                f" and blocks of {self.block}"
            )
        self.epoch, self.position = state["epoch"], state["position"]


class ShardReader(Sequences):
    """A Dataset's packed sequences: memory-mapped shards, remote ones through a local cache.
    `block`: shards shuffled together (every shard when None)."""

    def __init__(
        self,
        uri: str,
        split: str = "train",
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        block: int | None = None,
        endpoint_url: str | None = None,
        cache_dir: str | None = None,
    ):
        fs, root = filesystem(uri, endpoint_url)
        self.manifest = shards.read_manifest(fs, root)
        if self.manifest is None:
            raise FileNotFoundError(f"{uri} has no {shards.MANIFEST}: the dataset is not complete")
        entries = self.manifest["splits"][split]["shards"]
        self.sequence_length = self.manifest["sequenceLength"]
        sizes = [e["sequences"] for e in entries]
        super().__init__(sizes, split, rank, world_size, seed, block or len(entries))
        remote = not isinstance(fs, LocalFileSystem)
        self._cache = _Cache(fs, [join(root, e["path"]) for e in entries], remote, cache_dir)
        largest = sorted((e["bytes"] for e in entries), reverse=True)[: 2 * self.block]
        self.cache_bytes = sum(largest) if remote else 0
        """The most disk the cache takes: two blocks of the largest shards (none when local)."""

    def sequence(self, index: int) -> np.ndarray:
        """Sequence `index` of the whole split (0 <= index < total), unshuffled."""
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._cache.shard(shard)[index - self._starts[shard]]

    def _ahead(self, epoch: int, position: int, window: int) -> None:
        """Keep the blocks the window touches (running on into the next epoch past the end),
        and fetch the one after them when the window lies in one block."""
        if self._cache.folder is None:
            return
        touched, start, end, following = [], 0, position + window, None
        while following is None:
            for block in self._blocks(epoch)[1]:
                if start >= end:
                    following = block
                    break
                start += int(self._sizes[block].sum())
                if start > position:
                    touched.append(block)
            epoch += 1
        now = {int(s) for block in touched for s in block}
        self._cache.keep(now, {int(s) for s in following} if len(touched) == 1 else set())


class ArrayReader(Sequences):
    """Rows held in memory (fine-tuning examples: [n, 2, length] of inputs and targets)."""

    def __init__(self, rows: np.ndarray, split: str = "train", *, rank=0, world_size=1, seed=0):
        self.rows = rows
        super().__init__([len(rows)], split, rank, world_size, seed)

    def sequence(self, index: int) -> np.ndarray:
        return self.rows[index]


class _Shard:
    def __init__(self, path: str):
        table = pa.ipc.open_file(pa.memory_map(path)).read_all()
        tokens = table.column("tokens").combine_chunks()
        width = tokens.type.list_size
        self.rows = tokens.values.to_numpy(zero_copy_only=True).reshape(-1, width)

    def __getitem__(self, row: int) -> np.ndarray:
        return self.rows[row]


class _Cache:
    """A split's shards, opened when first read. Remote ones are copied into a folder of this
    process's own and deleted when `keep` no longer names them (a mapped shard stays readable
    once its file is gone); the next ones are fetched by a background thread."""

    def __init__(self, fs, paths: list[str], remote: bool, root: str | None):
        self.fs, self.paths, self.folder = fs, paths, None
        self.open: dict[int, _Shard] = {}
        self.lock = threading.Lock()
        self.kept: tuple[set[int], set[int]] | None = None
        self.fetching: Future | None = None
        if remote:
            root = root or os.environ.get(SHARD_CACHE_ENV) or tempfile.gettempdir()
            root = os.path.join(root, "lmforge-shards")
            os.makedirs(root, exist_ok=True)
            _sweep(root)
            self.folder = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="shard-fetch")
            weakref.finalize(self, shutil.rmtree, self.folder, True)

    def shard(self, number: int) -> _Shard:
        with self.lock:
            found = self.open.get(number)
        if found is None:
            path = self.paths[number]
            if self.folder:
                local = os.path.join(self.folder, f"{number}.arrow")
                part = f"{local}.part-{threading.get_ident()}"  # the fetcher may race a reader
                self.fs.get_file(path, part)
                os.replace(part, local)
                path = local
            found = _Shard(path)
            with self.lock:
                self.open[number] = found
        return found

    def keep(self, now: set[int], then: set[int]) -> None:
        """Hold the shards `now`, fetched before this returns, and `then`, fetched in the
        background; delete every other."""
        if self.folder is None or self.kept == (now, then):
            return
        self.kept = (now, then)
        if self.fetching:
            self.fetching.result()
        with self.lock:
            gone = [n for n in self.open if n not in now | then]
            for number in gone:
                del self.open[number]
        for number in gone:
            os.remove(os.path.join(self.folder, f"{number}.arrow"))
        for number in sorted(now):
            self.shard(number)
        self.fetching = self.pool.submit(lambda: [self.shard(n) for n in sorted(then)])


def _sweep(root: str) -> None:
    """Remove the cache folders of processes that are gone (killed before they cleaned up)."""
    for name in os.listdir(root):
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
