"""Few-shot contrastive tuning in bfloat16 vs float32 on the CPU: SST-2, 8 sentences per class (MiniLM).

Data: SST-2; per seed, 8 sentences of each class drawn from the training
file as in the ``fewshot`` benchmark (``RandomState(seed)``), scored on the
full test set (``--quick``: first 200 test sentences, one seed).

Models: ``ContrastiveClassifier(all-MiniLM-L6-v2, random_state=seed)`` at
its defaults (the few-shot configuration of record), and the same with
``precision="bf16"`` (training and prediction under ``torch.autocast`` in
bfloat16 on the CPU; weights stay float32). Both fit on the same draws, in
ABBA order per seed.

JSON keys: ``acc_fp32``, ``acc_bf16`` (mean test accuracy, %), ``*_runs``,
``fit_s_fp32``, ``fit_s_bf16`` (mean fit seconds), ``fit_time_ratio_bf16``
(bf16 over fp32; below 1 is faster), ``predict_time_ratio_bf16``. Whether
bfloat16 is faster depends on the CPU (matrix units with bfloat16 support,
such as AMX or AVX512-BF16); on others autocast only adds conversions.
"""

from __future__ import annotations

import time

import numpy as np
from _harness import sst2_pool_and_test

SIZES = {False: {"seeds": 5, "n_test": None}, True: {"seeds": 1, "n_test": 200}}


def run(quick: bool) -> dict:
    import torch

    from sktl import ContrastiveClassifier

    size = SIZES[bool(quick)]
    X_pool, y_pool, X_test, y_test, encoder = sst2_pool_and_test(size["n_test"])
    runs = {p: [] for p in ("32", "bf16")}
    fit_s = {p: [] for p in ("32", "bf16")}
    predict_s = {p: [] for p in ("32", "bf16")}
    for seed in range(size["seeds"]):
        rng = np.random.RandomState(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(y_pool == c), 8, replace=False)
                              for c in (0, 1)])
        X, y = [X_pool[i] for i in idx], y_pool[idx]
        for precision in (("32", "bf16") if seed % 2 == 0 else ("bf16", "32")):
            clf = ContrastiveClassifier(encoder, precision=precision, random_state=seed)
            start = time.perf_counter()
            clf.fit(X, y)
            fit_s[precision].append(time.perf_counter() - start)
            start = time.perf_counter()
            accuracy = clf.score(X_test, y_test)
            predict_s[precision].append(time.perf_counter() - start)
            runs[precision].append(100.0 * accuracy)
    return {"acc_fp32": float(np.mean(runs["32"])), "acc_bf16": float(np.mean(runs["bf16"])),
            "acc_fp32_runs": runs["32"], "acc_bf16_runs": runs["bf16"],
            "fit_s_fp32": float(np.mean(fit_s["32"])), "fit_s_bf16": float(np.mean(fit_s["bf16"])),
            "fit_time_ratio_bf16": float(np.sum(fit_s["bf16"]) / np.sum(fit_s["32"])),
            "predict_time_ratio_bf16": float(np.sum(predict_s["bf16"])
                                             / np.sum(predict_s["32"])),
            "cpu_bf16_matmul": bool(getattr(torch.backends.mkldnn, "is_available",
                                            lambda: False)()),
            "seeds": size["seeds"], "n_test": len(y_test), "quick": bool(quick)}


def table(result):
    return ("precision", "accuracy %", "fit s"), [
        ("float32", result["acc_fp32"], result["fit_s_fp32"]),
        ("bfloat16", result["acc_bf16"], result["fit_s_bf16"]),
    ]
