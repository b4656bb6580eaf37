"""`torchrun ... -m lmforge.jobs.train --config CONFIG.json`: one training process (rank)."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys

import torch
import torch.distributed as dist

from lmforge.jobs.train.trainer import Trainer
from lmforge.operator.api import events
from lmforge.operator.api.events import Exit
from lmforge.operator.api.jobs import ConfigError, read_train_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmforge.jobs.train")
    parser.add_argument("--config", required=True, help="a TrainConfig as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(args.config) as stream:
        config = read_train_config(stream.read())
    os.environ.update(config.training.parallelism.nccl)  # over the pod's (the chart's jobs.nccl)
    if "RANK" not in os.environ:  # run directly, not under torchrun: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    timeout = config.collective_timeout_seconds
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    try:
        return Trainer(config).train()
    except ConfigError as error:
        if dist.get_rank() == 0:
            events.error(str(error))
        return Exit.CONFIG_ERROR
    except RuntimeError as error:  # gloo raises on a timeout; NCCL's watchdog aborts instead
        if "timed out" not in str(error).lower():
            raise
        events.error(
            f"rank {dist.get_rank()}: a collective did not complete within"
            f" runPolicy.collectiveTimeoutSeconds ({timeout} s): {error}"
        )
        return Exit.TIMED_OUT
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
