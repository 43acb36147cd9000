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

    from sktl import ContrastiveClassifier, TransferClassifier
    from sktl.losses import DomainAwareLoss

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
    y_da = np.where(np.arange(len(y)) < 120, y, -1)
    torch.manual_seed(0)
    domain = TransferClassifier(nn.Sequential(nn.Linear(5, 16), nn.ReLU()), unfreeze="all",
                                criterion=DomainAwareLoss("dann"), max_epochs=2,
                                batch_size=16, random_state=0, cache=False,
                                device=accelerator).fit(X, y_da)
    domain_weights = float(sum(p.double().sum() for p in domain.module_.parameters()))
    torch.manual_seed(0)
    contrastive = ContrastiveClassifier(nn.Sequential(nn.Linear(5, 16), nn.ReLU()), lr=1e-2,
                                        batch_size=8, pair_iterations=2, random_state=0,
                                        cache=False, device=accelerator).fit(X, y)
    contrastive_weights = float(sum(p.double().sum()
                                    for p in contrastive.module_.parameters()))
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
            # The modes whose criterion reads the features (through DDP).
            "domain": domain_weights,
            "contrastive": contrastive_weights,
            "contrastive_accuracy": float(contrastive.score(X, y)),
        }, fh)


if __name__ == "__main__":
    main(sys.argv[1])
