"""Distributed checkpoints under <uri>/step-<N>/, and the contract that makes resume automatic.

A checkpoint holds the model and optimizer (torch.distributed.checkpoint, sharded the way the
model is), and one small file per rank with what differs per rank: the data position and every
RNG state, plus the LR schedule. Both are given as Stateful parts (state_dict, load_state_dict),
which save and load themselves. On another world size (an elastic gang that shrank or grew),
DCP reshards the model and optimizer, and every rank loads rank 0's file: the data position and
the schedule are the same on every rank, and the RNGs continue from rank 0's.

A checkpoint counts only once rank 0 has written its COMMITTED marker, last and atomically, with
each file's size and sha256. On start every rank loads the newest committed checkpoint whose
files still match their digests, falling back to the previous one (with a warning) if a file is
missing or corrupt. Directories without a marker are debris of an interrupted save: ignored, and
removed once a newer checkpoint commits.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from fsspec.implementations.local import LocalFileSystem
from torch.distributed.checkpoint.stateful import Stateful

from lmforge.jobs.storage import filesystem, join, options, write_atomic

COMMITTED = "COMMITTED"
_STEP = re.compile(r"^step-(\d+)$")
log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, uri: str, keep: int, endpoint_url: str | None = None, async_save=False):
        self.uri, self.keep, self.async_save = uri.rstrip("/"), keep, async_save
        self.endpoint_url = endpoint_url
        self.fs, self.root = filesystem(self.uri, endpoint_url)
        self.rank = dist.get_rank()
        self._pending: tuple[int, Any, dict] | None = None
        # A background save runs its collectives from another thread: on the training group they
        # would interleave with the training step's and deadlock, so it gets a group of its own.
        self._group = dist.new_group(backend="gloo") if async_save else None

    def step_uri(self, step: int) -> str:
        return f"{self.uri}/step-{step}"

    def committed(self) -> list[int]:
        """Steps with a commit marker, oldest first."""
        return sorted(s for s, done in self._listing().items() if done)

    def _listing(self) -> dict[int, bool]:
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return {}
        steps = {}
        for entry in entries:
            if match := _STEP.match(entry.rstrip("/").rsplit("/", 1)[-1]):
                steps[int(match[1])] = self.fs.exists(join(entry, COMMITTED))
        return steps

    def save(self, step: int, state: Stateful, rank_state: dict[str, Stateful], meta: dict):
        """Collective: every rank calls it. `state` is sharded over the ranks, `rank_state`
        saved by each rank whole. With async_save the commit happens at the next save or at
        wait(); until then the previous checkpoint is the newest committed one."""
        self.wait()
        path = join(self.root, f"step-{step}")
        if self.rank == 0 and self.fs.exists(path):  # debris of an interrupted save of this step
            self.fs.rm(path, recursive=True)
        dist.barrier()
        buffer = io.BytesIO()
        torch.save({name: part.state_dict() for name, part in rank_state.items()}, buffer)
        write_atomic(self.fs, join(path, f"rank-{self.rank}.pt"), buffer.getvalue())
        writer = _writer(self.fs, path, self.endpoint_url)
        sharded = state.state_dict()
        if self.async_save:
            saving = dcp.async_save(sharded, storage_writer=writer, process_group=self._group)
            self._pending = (step, saving, meta)
        else:
            dcp.save(sharded, storage_writer=writer)
            self._commit(step, meta)

    def wait(self) -> None:
        """Finish and commit an asynchronous save, if one is in flight."""
        if self._pending is not None:
            step, future, meta = self._pending
            self._pending = None
            future.result()
            self._commit(step, meta)

    def _commit(self, step: int, meta: dict) -> None:
        dist.barrier()  # every rank's files are written
        if self.rank == 0:
            path = join(self.root, f"step-{step}")
            files = {}
            for name in sorted(self.fs.ls(path, detail=False)):
                data = self.fs.cat_file(name)
                files[name.rsplit("/", 1)[-1]] = {"size": len(data), "sha256": _sha(data)}
            world = dist.get_world_size()
            marker = {"step": step, "time": time.time(), "files": files, "worldSize": world, **meta}
            write_atomic(self.fs, join(path, COMMITTED), json.dumps(marker, indent=1).encode())
            self._prune()
        dist.barrier()

    def _prune(self) -> None:
        """Keep the newest `keep` committed checkpoints. Saves run one at a time, so at a commit
        every directory without a marker is debris of a save that died."""
        listing = self._listing()
        keep = sorted(s for s, done in listing.items() if done)[-self.keep :]
        for step in listing:
            if step not in keep:
                self.fs.rm(join(self.root, f"step-{step}"), recursive=True)

    def load(self, state: Stateful, rank_state: dict[str, Stateful], meta: dict) -> int | None:
        """Collective. Loads the newest good checkpoint into `state` and `rank_state`; returns
        its step, or None to start fresh. Raises ValueError when the newest checkpoint was
        written for another configuration (meta), naming what differs."""
        sharded = state.state_dict()  # the tensors dcp.load fills in place
        for step in reversed(self.committed()):
            marker = json.loads(self.fs.cat_file(join(self.root, f"step-{step}", COMMITTED)))
            differ = {k: (marker.get(k), v) for k, v in meta.items() if marker.get(k) != v}
            if differ:
                raise ValueError(_mismatch(self.step_uri(step), differ))
            same_world = marker.get("worldSize") == dist.get_world_size()
            mine = f"rank-{self.rank if same_world else 0}.pt"
            try:
                self._verify(step, marker, mine)
                reader = _reader(self.fs, join(self.root, f"step-{step}"), self.endpoint_url)
                dcp.load(sharded, storage_reader=reader)
                data = self.fs.cat_file(join(self.root, f"step-{step}", mine))
                saved = torch.load(io.BytesIO(data), weights_only=False)
                failed = torch.zeros(1)
            except Exception as error:  # a missing or corrupt file; agreed on below
                log.warning("checkpoint %s is unusable (%s)", self.step_uri(step), error)
                failed = torch.ones(1)
            dist.all_reduce(failed)
            if not failed.item():
                state.load_state_dict(sharded)
                for name, part in rank_state.items():
                    if name in saved:  # a part an older version did not save starts fresh
                        part.load_state_dict(saved[name])
                return step
            log.warning("falling back to the previous committed checkpoint")
            if self.rank == 0:  # no longer counts as committed; removed at the next commit
                marker_path = join(self.root, f"step-{step}", COMMITTED)
                self.fs.mv(marker_path, marker_path + ".unusable")
        return None

    def _verify(self, step: int, marker: dict, mine: str) -> None:
        path = join(self.root, f"step-{step}")
        for name, expected in marker["files"].items():
            if name.startswith("rank-") and name != mine:
                continue
            data = self.fs.cat_file(join(path, name))
            if len(data) != expected["size"] or _sha(data) != expected["sha256"]:
                raise ValueError(f"{name} does not match its digest in {COMMITTED}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mismatch(uri: str, differ: dict) -> str:
    what = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in differ.items())
    return (
        f"the checkpoint at {uri} was written by another configuration ({what}): restore the"
        " spec, or set training.checkpoint.uri to a new location to start over"
    )


def _writer(fs, path: str, endpoint_url: str | None):
    if isinstance(fs, LocalFileSystem):
        return dcp.FileSystemWriter(path)
    uri = fs.unstrip_protocol(path)
    return dcp.FsspecWriter(uri, **options(uri, endpoint_url))


def _reader(fs, path: str, endpoint_url: str | None):
    if isinstance(fs, LocalFileSystem):
        return dcp.FileSystemReader(path)
    uri = fs.unstrip_protocol(path)
    return dcp.FsspecReader(uri, **options(uri, endpoint_url))
