"""train.py with a deliberately wrong gradient average, for ``torchrun``: the ranks' gradients are
summed instead of averaged (a DDP communication hook), as a world size left out of the average
would do. The negative control of test_train.py's comparison of two processes with one, which
this run must fail.

    torchrun --standalone --nproc_per_node 2 tests/ddp_sum_gradients.py TRAIN_PY_ARGUMENTS...

(with the project root on PYTHONPATH).
"""

# No ``from __future__ import annotations``: DDP checks the hook's annotations as objects.
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import train


def sum_gradients(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's all-reduce without its division by the world size."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda done: done.value()[0])


class SummingDistributedDataParallel(DistributedDataParallel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_comm_hook(None, sum_gradients)


if __name__ == "__main__":
    train.DistributedDataParallel = SummingDistributedDataParallel
    train.main(sys.argv[1:])
