"""Run by test_distributed.py under ``torchrun --nproc_per_node 2``: each
process fits the same TransferClassifier through an ``accelerate.Accelerator``
(DistributedDataParallel on CPU, gloo backend) and saves what it learnt.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/ddp_fit.py OUT_DIR``.
"""

import json
import os
import sys


def main(out_dir):
    import numpy as np
    import torch
    from accelerate import Accelerator
    from torch import nn

    from sktl import TransferClassifier

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    rng = np.random.RandomState(0)  # the same data in every process
    X = rng.normal(size=(160, 5)).astype("float32")
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    torch.manual_seed(0)  # the same starting weights in every process
    body = nn.Sequential(nn.Linear(5, 16), nn.ReLU())
    initial = {k: v.clone() for k, v in body.state_dict().items()}
    clf = TransferClassifier(body, unfreeze="all", max_epochs=6, lr=0.03, batch_size=16,
                             random_state=0, cache=False, device=accelerator)
    clf.fit(X, y)
    state = {k: v.detach().cpu() for k, v in clf.module_.state_dict().items()}
    torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    moved = any(not torch.equal(state[f"backbone.{k}"], v) for k, v in initial.items())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({
            "rank": rank,
            "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "backend": torch.distributed.get_backend(),
            "batches_per_epoch": len(clf.history_[-1]["batches"]),
            "train_loss": [float(v) for v in clf.history_[:, "train_loss"]],
            "backbone_moved": moved,
            "unwrapped": type(clf.module_).__name__,
            "accuracy": float(clf.score(X, y)),
        }, fh)


if __name__ == "__main__":
    main(sys.argv[1])
