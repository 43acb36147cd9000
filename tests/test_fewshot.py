"""ContrastiveClassifier: few-shot contrastive tuning (SetFit-like), then a
closed-form logistic-regression head, through sktl's one training engine."""

import pickle

import numpy as np
import pytest
import torch
from conftest import Events, TinyNet
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from torch import nn

from sktl import ContrastiveClassifier, FeatureCache, TransferClassifier
from sktl._engine import BalancedBatches
from sktl._engine.net import schedule_factor
from sktl.backbones import resolve_backbone
from sktl.callbacks import EarlyStopping
from sktl.fewshot import auto_temperature
from sktl.losses import CosinePairLoss, Output, SupConLoss

# -- a tiny BERT sentence encoder (random weights, MiniLM's tokenizer) ----------
POSITIVE = ["great", "good", "excellent", "superb", "lovely", "wonderful", "fine", "nice"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "horrible", "dreadful", "weak", "sad"]
FILLER = ["the", "movie", "film", "was", "really", "plot", "acting", "quite", "a", "story",
          "this", "it", "ending", "cast", "very"]


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory):
    """A 3-layer, 32-wide BERT with a 48-word vocabulary, saved as a
    sentence-transformers folder (mean pooling)."""
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    wordpiece = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)},
                                           unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer()
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SentenceTransformer(str(folder), device="cpu").save(str(folder))  # adds mean pooling
    return str(folder)


def _sentences(n_per_class, seed, noise=4):
    """Two classes told apart by one sentiment word among filler words."""
    rng = np.random.RandomState(seed)
    X, y = [], []
    for label, words in enumerate([NEGATIVE, POSITIVE]):
        for _ in range(n_per_class):
            tokens = list(rng.choice(FILLER, noise)) + [rng.choice(words)]
            rng.shuffle(tokens)
            X.append(" ".join(tokens))
            y.append(label)
    return X, np.array(y)


def _contrastive(backbone, **params):
    # A constant learning rate, and cosine pairs where not said: the settings
    # these tests' margins were calibrated with.
    settings = {"unfreeze": 2, "lr": 3e-3, "batch_size": 8, "pair_iterations": 10,
                "lr_schedule": "constant", "criterion": "cosine", "random_state": 0}
    return ContrastiveClassifier(backbone, **{**settings, **params})


def _loss(kind, embeddings, labels, **kwargs):
    criterion = SupConLoss(**kwargs) if kind == "supcon" else CosinePairLoss()
    return criterion(Output(None, embeddings), {"y": labels})


# -- class-balanced batches -------------------------------------------------------
def _batches(labels, n_iterations, batch_size, seed=0):
    return list(BalancedBatches(labels, batch_size, n_iterations, np.random.RandomState(seed)))


def test_balanced_batches_are_class_balanced_and_cover_the_data():
    targets = np.repeat([0, 1, 2], [6, 6, 5])
    batches = _batches(targets, 4, 9)
    assert len(batches) == int(np.ceil(4 * len(targets) / 9))
    draws = np.zeros(len(targets), int)
    for idx in batches:
        assert len(idx) == 9 and len(set(idx)) == 9  # no example twice in a batch
        counts = np.bincount(targets[idx], minlength=3)
        assert counts.max() - counts.min() <= 1
        draws[idx] += 1
    assert draws.min() >= 3 and draws.max() <= 5  # about n_iterations each


def test_balanced_batches_with_a_class_smaller_than_its_share():
    targets = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    for idx in _batches(targets, 3, 8, seed=1):
        assert len(set(idx)) == len(idx)
        assert np.sum(targets[idx] == 0) == 2


def test_balanced_batches_hold_positives_once_larger_than_the_class_count():
    targets = np.repeat(np.arange(10), 8)
    for idx in _batches(targets, 5, 11):
        assert np.bincount(targets[idx]).max() >= 2


def test_balanced_batches_draw_anew_each_epoch():
    sampler = BalancedBatches(np.repeat([0, 1], 6), 4, 2, np.random.RandomState(0))
    assert list(sampler) != list(sampler)


# -- losses -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cosine", "supcon"])
def test_losses_prefer_separated_classes(kind):
    labels = torch.tensor([0, 0, 1, 1])
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    assert _loss(kind, separated, labels) < _loss(kind, mixed, labels)
    if kind == "cosine":
        assert _loss(kind, separated, labels) < 1e-3


def test_cosine_loss_weights_positive_and_negative_pairs_equally():
    labels = torch.tensor([0, 0, 1, 2])
    z = torch.eye(4)  # all pairs orthogonal: positives wrong by 1, negatives right
    assert _loss("cosine", z, labels).item() == pytest.approx(0.5)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_loss_matches_its_definition(temperature):
    rng = np.random.RandomState(0)
    z = rng.normal(size=(6, 4))
    labels = np.array([0, 0, 0, 1, 1, 2])
    sim = z @ z.T / np.outer(np.linalg.norm(z, axis=1), np.linalg.norm(z, axis=1))
    per_anchor = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if positives:  # class 2 has no positive: not an anchor
            log_norm = np.log(np.exp(sim[i, others] / temperature).sum())
            per_anchor.append(np.mean([sim[i, p] / temperature - log_norm
                                       for p in positives]))
    value = _loss("supcon", torch.as_tensor(z), torch.as_tensor(labels),
                  temperature=temperature)
    assert value.item() == pytest.approx(-np.mean(per_anchor), rel=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "supcon"])
def test_a_batch_without_pairs_to_learn_from_gives_no_loss(kind):
    embeddings = torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])  # no two alike: no positive pair
    assert (_loss(kind, embeddings, labels) is None) == (kind == "supcon")  # 0/0 for SupCon
    assert _loss(kind, embeddings[:1], labels[:1]) is None  # one sentence: no pair


def test_anchors_are_weighted_by_sample_weight():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]])
    labels = torch.tensor([0, 0, 1, 1])
    criterion = SupConLoss()
    plain = criterion(Output(None, z), {"y": labels})
    # Weights of 1 (what the estimator's scaling to a mean of 1 makes of
    # equal weights): the unweighted loss.
    ones = criterion(Output(None, z), {"y": labels, "sample_weight": torch.ones(4)})
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)
    skewed = criterion(Output(None, z), {"y": labels,
                                         "sample_weight": torch.tensor([1.0, 1.0, 0.0, 1.0])})
    assert skewed.item() != pytest.approx(plain.item(), rel=1e-3)


# -- temperature and schedules ----------------------------------------------------------
def test_auto_temperature_follows_the_examples_per_class(tiny_text_dir):
    assert [auto_temperature(n) for n in (4, 8, 22, 23, 64, 500)] == [0.5, 0.5, 0.5, 0.1,
                                                                      0.1, 0.1]
    X, y = _sentences(4, 0)
    assert _contrastive(tiny_text_dir, pair_iterations=1, criterion="supcon").fit(
        X, y).temperature_ == 0.5
    clf = _contrastive(tiny_text_dir, pair_iterations=1, criterion="cosine").fit(X, y)
    assert clf.temperature_ is None


def test_the_temperature_reaches_the_loss(tiny_text_dir):
    X, y = _sentences(4, 0)
    fits = [_contrastive(tiny_text_dir, criterion=SupConLoss(t), pair_iterations=2).fit(X, y)
            for t in (0.1, 0.1, 0.5)]
    losses = [clf.history_[0, "train_loss"] for clf in fits]
    assert losses[0] == pytest.approx(losses[1])  # reproducible
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = schedule_factor("linear", 20)  # 2 warm-up steps
    values = [factor(step) for step in range(21)]
    assert values[:3] == [0.0, 0.5, 1.0]
    assert np.all(np.diff(values[2:]) < 0)
    assert values[-1] == 0.0


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_other_schedules_rise_then_fall(name):
    factor = schedule_factor(name, 100)
    values = np.array([factor(step) for step in range(101)])
    peak = values.argmax()
    assert 0 < peak < 50 and values[peak] == pytest.approx(1.0, abs=1e-3)
    assert np.all(np.diff(values[peak:]) <= 1e-12) and values[-1] < 1e-3


_STEP_RATES = []


class _RecordingSGD(torch.optim.SGD):
    """Notes the learning rate of every step in ``_STEP_RATES``."""

    def step(self, closure=None):
        _STEP_RATES.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_the_schedule_sets_the_learning_rate_of_each_step(tiny_text_dir, schedule):
    X, y = _sentences(5, 0)  # 10 sentences, 4 iterations: 5 batches of 8
    _STEP_RATES.clear()
    _contrastive(tiny_text_dir, optimizer=_RecordingSGD, lr=0.1, pair_iterations=4,
                 batch_size=8, lr_schedule=schedule).fit(X, y)
    rates = np.asarray(_STEP_RATES)
    assert len(rates) == 5
    if schedule == "constant":
        np.testing.assert_allclose(rates, 0.1)
    else:  # one warm-up step from 0, then 0.1 falling linearly
        np.testing.assert_allclose(rates, [0.0, 0.1, 0.075, 0.05, 0.025])


# -- labels ----------------------------------------------------------------------------
def test_a_class_with_one_example_is_refused(tiny_text_dir):
    X, y = _sentences(4, 0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        _contrastive(tiny_text_dir).fit(X[:5], y[:5])
    with pytest.raises(ValueError, match="at least two classes"):
        _contrastive(tiny_text_dir).fit(X[:4], y[:4])


def test_a_batch_too_small_for_positive_pairs_is_refused(tiny_text_dir):
    X, y = _sentences(4, 0)
    y3 = np.arange(len(y)) % 3
    with pytest.raises(ValueError, match="batch_size > 3"):
        _contrastive(tiny_text_dir, batch_size=3).fit(X, y3)


# -- training -------------------------------------------------------------------------
def test_only_the_unfrozen_layers_move(tiny_text_dir):
    X, y = _sentences(6, 0)
    clf = _contrastive(tiny_text_dir, unfreeze=2).fit(X, y)
    before = resolve_backbone(tiny_text_dir).module.state_dict()
    after = {k: v.cpu() for k, v in clf.backbone_.module.state_dict().items()}
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved, "contrastive tuning changed nothing"
    assert all(".layer.1." in k or ".layer.2." in k for k in moved), sorted(moved)[:5]
    assert clf.n_blocks_ == 4 and len(clf.history_) == 1


def test_random_state_makes_fits_identical(tiny_text_dir):
    X, y = _sentences(6, 0)
    X_test, _ = _sentences(5, 1)
    a = _contrastive(tiny_text_dir, random_state=3).fit(X, y).predict_proba(X_test)
    b = _contrastive(tiny_text_dir, random_state=3).fit(X, y).predict_proba(X_test)
    c = _contrastive(tiny_text_dir, random_state=4).fit(X, y).predict_proba(X_test)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def _separation(clf, X, y):
    """Mean same-class minus mean other-class cosine similarity of embeddings."""
    from sktl import FeatureExtractor

    z = FeatureExtractor(clf, cache=False).fit(X).transform(X)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return sim[same & off].mean() - sim[~same].mean()


@pytest.mark.parametrize("kind", ["cosine", "supcon"])
def test_contrastive_tuning_separates_held_out_sentences(tiny_text_dir, kind):
    X, y = _sentences(8, 0)
    X_test, y_test = _sentences(30, 1)
    # The margins below hold for this seed's CPU random streams; a GPU draws
    # its dropout masks from another generator, so the run is another draw.
    probe = TransferClassifier(tiny_text_dir, unfreeze=0, random_state=0,
                               device="cpu").fit(X, y)
    tuned = _contrastive(tiny_text_dir, unfreeze="all",
                         criterion=kind if kind == "cosine" else SupConLoss(0.1),
                         pair_iterations=20, device="cpu").fit(X, y)
    assert tuned.history_[0, "train_loss"] > 0
    assert _separation(tuned, X_test, y_test) > _separation(probe, X_test, y_test) + 0.05
    assert tuned.score(X_test, y_test) > max(0.55, probe.score(X_test, y_test))


def test_class_and_sample_weights_reach_tuning_and_head(tiny_text_dir):
    X, y = _sentences(6, 0)
    plain = _contrastive(tiny_text_dir, pair_iterations=2).fit(X, y)
    ones = _contrastive(tiny_text_dir, pair_iterations=2).fit(X, y, sample_weight=np.ones(12))
    np.testing.assert_allclose(ones.predict_proba(X), plain.predict_proba(X), rtol=1e-5,
                               atol=1e-6)
    weighted = _contrastive(tiny_text_dir, pair_iterations=2,
                            class_weight={0: 1.0, 1: 5.0}).fit(X, y)
    assert not np.allclose(weighted.predict_proba(X), plain.predict_proba(X))


def test_callbacks_precision_and_early_stopping(tiny_text_dir):

    X, y = _sentences(12, 0)
    events = Events()
    clf = _contrastive(tiny_text_dir, pair_iterations=2, max_epochs=6, precision="bf16",
                       callbacks=[events],
                       early_stopping=EarlyStopping(patience=1, validation_fraction=0.35)
                       ).fit(X, y)
    assert events.seen[0] == "train_begin" and events.seen.count("epoch_end") == len(
        clf.history_)
    assert np.isfinite(clf.history_[:, "valid_loss"]).all()
    assert clf.predict_proba(X).shape == (len(X), 2)
    with pytest.raises(ValueError, match="max_epochs > 1"):
        _contrastive(tiny_text_dir, early_stopping=True).fit(X, y)


# -- frozen layers run once, through the cache -------------------------------------
def test_prefix_rows_are_shared_through_the_cache(tiny_text_dir):
    X, y = _sentences(6, 0)
    cache = FeatureCache()
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    misses = cache.misses
    assert misses == len(X)  # each sentence's frozen layers ran once
    clone(clf).fit(X, y)  # another fit (CV fold, grid point): rows read back
    assert cache.misses == misses and cache.hits >= len(X)
    X_test, _ = _sentences(4, 2)
    cached = clf.predict_proba(X_test)  # top layers only, on cached rows
    uncached = clone(clf).set_params(cache=False).fit(X, y).predict_proba(X_test)
    np.testing.assert_allclose(cached, uncached, rtol=1e-4, atol=1e-5)
    # The shared encoder was never cut: all its layers are still there.
    assert len(clf.backbone_.module.model[0].auto_model.encoder.layer) == 3


def test_a_large_input_predicted_in_chunks_does_not_flush_the_cache(tiny_text_dir,
                                                                      monkeypatch):
    from sktl._engine import frozen
    from sktl._cache import sample_hashes

    X, y = _sentences(6, 0)
    probe = FeatureCache()
    _contrastive(tiny_text_dir, cache=probe, pair_iterations=2).fit(X, y)
    cache = FeatureCache(max_bytes=4 * probe.nbytes)  # the training rows: a quarter
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    expected = clf.predict_proba(X)
    monkeypatch.setattr(frozen, "CHUNK", 3)
    X_big, _ = _sentences(30, 3)  # five times the training rows
    clf.predict_proba(X_big)
    # Storing stopped at half the cache: the training rows are still there.
    rows = cache.lookup(clf._frozen_reader.key, sample_hashes(X))
    assert all(r is not None for r in rows)
    assert cache.nbytes <= cache.max_bytes
    np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=1e-5, atol=1e-6)


def test_token_states_beyond_the_memory_bound_are_not_held(tiny_text_dir, monkeypatch):
    """Past PREFIX_MAX_BYTES the fit runs through the frozen layers instead
    of holding every training sentence's token states; same model."""
    from sktl._engine import frozen

    X, y = _sentences(6, 0)
    X_test, _ = _sentences(4, 2)
    expected = _contrastive(tiny_text_dir, cache=False, pair_iterations=2).fit(X, y)
    monkeypatch.setattr(frozen, "PREFIX_MAX_BYTES", 1000)  # a few sentences' rows
    cache = FeatureCache()
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    assert clf._frozen_reader is None and cache.nbytes == 0
    np.testing.assert_allclose(clf.predict_proba(X_test), expected.predict_proba(X_test),
                               rtol=1e-4, atol=1e-5)


def test_concurrent_predictions_through_the_cached_prefix(tiny_text_dir):
    from concurrent.futures import ThreadPoolExecutor

    X, y = _sentences(6, 0)
    clf = _contrastive(tiny_text_dir, cache=FeatureCache(), pair_iterations=2).fit(X, y)
    tests = [_sentences(3, seed)[0] for seed in range(8)]
    serial = [clf.predict_proba(t) for t in tests]
    # Nothing is cut in place any more: no lock, threads run together.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(clf.predict_proba, tests * 3))
    for i, result in enumerate(results):
        np.testing.assert_allclose(result, serial[i % len(tests)], rtol=1e-5, atol=1e-6)


def test_save_and_load(tiny_text_dir, tmp_path):
    import sktl

    X, y = _sentences(6, 0)
    clf = _contrastive(tiny_text_dir, criterion="supcon", pair_iterations=2).fit(X, y)
    sktl.save(clf, tmp_path / "model")
    loaded = sktl.load(tmp_path / "model")
    assert isinstance(loaded, ContrastiveClassifier) and loaded.temperature_ == 0.5
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-5,
                               atol=1e-6)


# -- scikit-learn integration ---------------------------------------------------------
def test_cross_validate_on_few_shot_data(tiny_text_dir):
    X, y = _sentences(8, 0)
    cv = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    scores = cross_validate(_contrastive(tiny_text_dir, pair_iterations=2), X, y, cv=cv)
    assert len(scores["test_score"]) == 4
    assert np.all(np.isfinite(scores["test_score"]))


def test_grid_search_over_contrastive_params(tiny_text_dir):
    X, y = _sentences(8, 0)
    grid = {"criterion": ["cosine", "supcon"], "pair_iterations": [2, 5]}
    search = GridSearchCV(_contrastive(tiny_text_dir), grid,
                          cv=StratifiedKFold(2, shuffle=True, random_state=0)).fit(X, y)
    assert len(search.cv_results_["params"]) == 4


def test_params_clone_and_pickle(tiny_text_dir):
    params = {"pair_iterations": 3, "criterion": "supcon", "max_epochs": 2, "head_C": 0.5,
              "lr_schedule": "linear"}
    clf = ContrastiveClassifier(tiny_text_dir, unfreeze=1, random_state=0, batch_size=8,
                                **params)
    assert {k: clf.get_params()[k] for k in params} == params
    assert {k: clone(clf).get_params()[k] for k in params} == params
    X, y = _sentences(5, 0)
    clf.fit(X, y)
    assert len(clf.history_) == 2
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


def test_a_vector_backbone(blobs):
    X, y = blobs
    clf = ContrastiveClassifier(TinyNet(32), unfreeze=1, lr=1e-2, pair_iterations=5,
                                random_state=0)
    assert clf.fit(X, y).score(X, y) > 0.9
    assert isinstance(clf.module_.head[0], nn.Module)


@pytest.mark.parametrize("params, match", [
    ({"unfreeze": 0}, "'unfreeze' parameter"),
    ({"pair_iterations": 0}, "'pair_iterations' parameter"),
    ({"criterion": "triplet"}, "'criterion' parameter"),
    ({"lr_schedule": "step"}, "'lr_schedule' parameter"),
])
def test_invalid_parameters(tiny_text_dir, params, match):
    X, y = _sentences(4, 0)
    with pytest.raises(ValueError, match=match):
        _contrastive(tiny_text_dir, **params).fit(X, y)


def test_a_loss_that_trains_a_head_is_refused(tiny_text_dir):
    from sktl.losses import CrossEntropyLoss

    X, y = _sentences(4, 0)
    with pytest.raises(ValueError, match="trains a head"):
        _contrastive(tiny_text_dir, criterion=CrossEntropyLoss()).fit(X, y)


# -- the real encoder -----------------------------------------------------------------
@pytest.mark.integration
def test_contrastive_beats_frozen_probe_on_few_shot_sst2(minilm_dir):
    """8 labelled sentences per class, 3 draws: contrastive tuning (top 2 of
    6 MiniLM layers) beats the frozen encoder + logistic regression on
    average (SetFit's finding)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from sktl import FeatureExtractor
    from sktl.datasets import load_sentiment

    X, y = load_sentiment("sst2", "train")
    X_test, y_test = load_sentiment("sst2", "test")
    X_test, y_test = list(X_test[:200]), y_test[:200]
    probe, tuned = [], []
    for seed in range(3):
        rng = np.random.RandomState(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 8, replace=False)
                              for c in (0, 1)])
        X_few, y_few = [X[i] for i in idx], y[idx]
        pipe = make_pipeline(FeatureExtractor(minilm_dir), LogisticRegression())
        probe.append(pipe.fit(X_few, y_few).score(X_test, y_test))
        clf = ContrastiveClassifier(minilm_dir, unfreeze=2, random_state=seed)
        tuned.append(clf.fit(X_few, y_few).score(X_test, y_test))
    assert np.mean(tuned) > np.mean(probe), (tuned, probe)
