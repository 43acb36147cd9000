"""The protocol shared by ``distill_text`` and ``distill_vision`` (not a benchmark).

One run, side by side: the teacher is trained on every labelled training
row; both students see only the first ``n_labelled`` labels. The hard-label
student trains on those alone; the distilled student
(``DistillationClassifier``) on the same labels **plus** the other training
rows as unlabelled transfer data (``y = -1``), which it learns from the
teacher's soft targets only -- the usual reason to distil: a big model is
good, a small one is needed for deployment, and unlabelled in-domain data is
plentiful. All three are evaluated on the full test set.

``predict_speedup``: predict time of the teacher over that of the distilled
student on the whole test set, the two alternated (ABBA) ``reps`` times,
best of each; the teacher predicts through its backbone (its feature cache
switched off for that measurement, since a cached teacher would only read
stored rows).
"""

from __future__ import annotations

import time

import numpy as np


def distillation_report(teacher, student, distiller, X_train, y_train, X_test, y_test,
                        n_labelled, reps):
    """Fit teacher, hard student and distilled student; return the JSON keys."""
    from _harness import alternate, best
    from sklearn.base import clone
    from sklearn.frozen import FrozenEstimator

    from sktl.backbones._inputs import take

    labelled = np.arange(len(y_train)) < n_labelled
    y_few = np.where(labelled, y_train, -1)
    out, times = {}, {}

    start = time.perf_counter()
    teacher.fit(X_train, y_train)
    times["teacher_fit_s"] = time.perf_counter() - start

    start = time.perf_counter()
    hard = clone(student).fit(take(X_train, np.flatnonzero(labelled)), y_train[labelled])
    times["student_hard_fit_s"] = time.perf_counter() - start

    start = time.perf_counter()
    distilled = clone(distiller).set_params(teacher=FrozenEstimator(teacher),
                                            student=clone(student))
    distilled.fit(X_train, y_few)
    times["student_distilled_fit_s"] = time.perf_counter() - start

    out["teacher_acc"] = 100.0 * teacher.score(X_test, y_test)
    out["student_hard_acc"] = 100.0 * hard.score(X_test, y_test)
    out["student_distilled_acc"] = 100.0 * distilled.score(X_test, y_test)
    out["retention"] = out["student_distilled_acc"] / out["teacher_acc"]

    uncached_teacher = clone(teacher).set_params(cache=False)
    uncached_teacher.__dict__.update({k: v for k, v in teacher.__dict__.items()
                                      if k.endswith("_") or k.startswith("_")})
    predict_times, _, _ = alternate({"teacher": lambda: uncached_teacher.predict(X_test),
                                     "student": lambda: distilled.predict(X_test)}, reps)
    out["predict_speedup"] = best(predict_times["teacher"]) / best(predict_times["student"])
    out["teacher_predict_s"] = best(predict_times["teacher"])
    out["student_predict_s"] = best(predict_times["student"])
    out["n_labelled"] = int(n_labelled)
    out["n_unlabelled"] = int(len(y_train) - n_labelled)
    out["n_test"] = int(len(y_test))
    out.update(times)
    out["target_met_retention"] = out["retention"] >= 0.97
    out["target_met_speedup"] = out["predict_speedup"] >= 3.0
    out["target_met_beats_hard"] = out["student_distilled_acc"] > out["student_hard_acc"]
    return out


def table(result):
    rows = [("teacher", result["teacher_acc"], result["teacher_predict_s"]),
            ("student, hard labels only", result["student_hard_acc"], ""),
            ("student, distilled", result["student_distilled_acc"],
             result["student_predict_s"]),
            ("retention (distilled / teacher)", result["retention"], ""),
            ("predict speedup (teacher / student)", result["predict_speedup"], "")]
    return ("model", "test accuracy %", "predict s"), rows
