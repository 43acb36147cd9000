"""Few-shot strategies of TransferClassifier: ``strategy="contrastive"``
(SetFit-like pair tuning, then a closed-form head) next to ``"finetune"``."""

import pickle

import numpy as np
import pytest
import torch
from conftest import TinyNet
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from torch import nn

from sktl import TransferClassifier
from sktl._cache import FeatureCache
from sktl._contrastive import (
    balanced_batches,
    check_few_shot_labels,
    contrastive_loss,
    embed,
    linear_schedule,
    make_encoder,
    pair_batches,
    sample_pairs,
)
from sktl._training import freeze
from sktl.backbones import resolve_backbone

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
    settings = {"strategy": "contrastive", "unfreeze": 2, "backbone_lr": 3e-3,
                "batch_size": 8, "pair_iterations": 10, "random_state": 0}
    return TransferClassifier(backbone, **{**settings, **params})


# -- pair sampling ----------------------------------------------------------------
def test_setfit_pairs_are_correct_and_balanced():
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    first, second, same = sample_pairs(targets, 3, np.random.RandomState(0))
    assert len(first) == 2 * 3 * len(targets)
    assert same.mean() == 0.5
    assert np.array_equal(same == 1, targets[first] == targets[second])
    assert not np.any(first == second)
    # every example is the anchor of one positive and one negative pair per iteration
    assert np.array_equal(np.bincount(first[same == 1]), np.full(len(targets), 3))
    assert np.array_equal(np.bincount(first[same == 0]), np.full(len(targets), 3))


def test_pair_batches_only_list_the_sampled_pairs():
    targets = np.repeat([0, 1], 4)
    for idx, mask in pair_batches(targets, 2, 4, np.random.RandomState(0)):
        assert mask.shape == (len(idx), len(idx))
        assert np.array_equal(mask, mask.T) and not mask.diagonal().any()
        assert 1 <= mask.sum() // 2 <= 4


def test_balanced_batches_are_class_balanced_and_cover_the_data():
    targets = np.repeat([0, 1, 2], [6, 6, 5])
    batches = list(balanced_batches(targets, 4, 9, np.random.RandomState(0)))
    assert len(batches) == int(np.ceil(4 * len(targets) / 9))
    draws = np.zeros(len(targets), int)
    for idx, mask in batches:
        assert len(idx) == 9 and len(set(idx)) == 9  # no example twice in a batch
        counts = np.bincount(targets[idx], minlength=3)
        assert counts.max() - counts.min() <= 1
        assert not mask.all() and mask.sum() == 9 * 8  # every pair but the diagonal
        draws[idx] += 1
    assert draws.min() >= 3 and draws.max() <= 5  # about n_iterations each


def test_balanced_batches_with_a_class_smaller_than_its_share():
    targets = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    for idx, _ in balanced_batches(targets, 3, 8, np.random.RandomState(1)):
        assert len(set(idx)) == len(idx)
        assert np.sum(targets[idx] == 0) == 2


# -- losses -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cosine", "supcon"])
def test_losses_prefer_separated_classes(kind):
    labels = torch.tensor([0, 0, 1, 1])
    mask = ~torch.eye(4, dtype=torch.bool)
    separated = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.01, 1.0]])
    assert (contrastive_loss(separated, labels, mask, kind)
            < contrastive_loss(mixed, labels, mask, kind))
    if kind == "cosine":
        assert contrastive_loss(separated, labels, mask, kind) < 1e-3


def test_cosine_loss_weights_positive_and_negative_pairs_equally():
    labels = torch.tensor([0, 0, 1, 2])
    mask = ~torch.eye(4, dtype=torch.bool)
    z = torch.eye(4)  # all pairs orthogonal: positives wrong by 1, negatives right
    assert contrastive_loss(z, labels, mask, "cosine").item() == pytest.approx(0.5)


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
    mask = ~torch.eye(6, dtype=torch.bool)
    value = contrastive_loss(torch.as_tensor(z), torch.as_tensor(labels), mask, "supcon",
                             temperature)
    assert value.item() == pytest.approx(-np.mean(per_anchor), rel=1e-6)


def test_contrastive_temperature_reaches_the_loss(tiny_text_dir):
    X, y = _sentences(4, 0)
    fits = [_contrastive(tiny_text_dir, contrastive_loss="supcon", pair_iterations=2,
                         contrastive_temperature=t).fit(X, y) for t in (0.1, 0.1, 0.5)]
    losses = [clf.history_[0, "contrastive_loss"] for clf in fits]
    assert losses[0] == pytest.approx(losses[1])  # reproducible
    assert losses[2] != pytest.approx(losses[0], rel=1e-3)


def test_linear_schedule_warms_up_then_decays_to_zero():
    factor = linear_schedule(20)  # 2 warm-up steps
    values = [factor(step) for step in range(21)]
    assert values[:3] == [0.0, 0.5, 1.0]
    assert np.all(np.diff(values[2:]) < 0)
    assert values[-1] == 0.0


_STEP_RATES = []


class _RecordingSGD(torch.optim.SGD):
    """Notes the learning rate of every step in ``_STEP_RATES``."""

    def step(self, closure=None):
        _STEP_RATES.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_contrastive_schedule_sets_the_learning_rate_of_each_step(tiny_text_dir, schedule):
    X, y = _sentences(5, 0)  # 10 sentences, 4 iterations: 5 batches of 8
    _STEP_RATES.clear()
    _contrastive(tiny_text_dir, optimizer=_RecordingSGD, backbone_lr=0.1, pair_iterations=4,
                 batch_size=8, contrastive_schedule=schedule).fit(X, y)
    rates = np.asarray(_STEP_RATES)
    assert len(rates) == 5
    if schedule == "constant":
        np.testing.assert_allclose(rates, 0.1)
    else:  # one warm-up step from 0, then 0.1 falling linearly
        np.testing.assert_allclose(rates, [0.0, 0.1, 0.075, 0.05, 0.025])


def test_label_checks():
    names = np.array(["neg", "pos", "mixed"])
    check_few_shot_labels(np.array([0, 0, 1, 1]), names, "batch", 4)
    with pytest.raises(ValueError, match="class 'pos' has 1"):
        check_few_shot_labels(np.array([0, 0, 1]), names, "batch", 4)
    with pytest.raises(ValueError, match="two classes"):
        check_few_shot_labels(np.array([0, 0, 0]), names, "batch", 4)
    # A batch no larger than the number of classes holds no positive pair.
    with pytest.raises(ValueError, match="needs batch_size > 3"):
        check_few_shot_labels(np.array([0, 0, 1, 1, 2, 2]), names, "batch", 3)
    check_few_shot_labels(np.array([0, 0, 1, 1, 2, 2]), names, "batch", 4)
    check_few_shot_labels(np.array([0, 0, 1, 1, 2, 2]), names, "pairs", 3)
    with pytest.raises(ValueError, match="needs batch_size >= 2"):
        check_few_shot_labels(np.array([0, 0, 1, 1]), names, "pairs", 1)


@pytest.mark.parametrize("kind", ["cosine", "supcon"])
def test_a_batch_without_pairs_to_learn_from_is_skipped(kind):
    embeddings = torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])  # no two alike: no positive pair
    loss = contrastive_loss(embeddings, labels, ~torch.eye(3, dtype=torch.bool), kind)
    assert (loss is None) == (kind == "supcon")  # SupCon is undefined (0/0) there
    # A single sentence: no pair at all.
    assert contrastive_loss(embeddings[:1], labels[:1], torch.zeros(1, 1, dtype=torch.bool),
                            kind) is None


def test_balanced_batches_hold_positives_once_larger_than_the_class_count():
    targets = np.repeat(np.arange(10), 8)
    rng = np.random.RandomState(0)
    for idx, _ in balanced_batches(targets, 5, 11, rng):
        assert np.bincount(targets[idx]).max() >= 2


def test_pairs_sampling_skips_steps_without_a_positive_pair(tiny_text_dir):
    X, y = _sentences(4, 0)
    # Two pairs per step under SupCon: a step with two negative pairs has no
    # positive, is skipped, and the loss stays finite.
    clf = _contrastive(tiny_text_dir, pair_sampling="pairs", contrastive_loss="supcon",
                       batch_size=2, pair_iterations=2).fit(X, y)
    assert np.isfinite(clf.history_[-1, "contrastive_loss"])


# -- text backbone: cached prefix, unfreeze, reproducibility --------------------------
def test_cached_prefix_reproduces_the_full_forward(tiny_text_dir):
    X, _ = _sentences(4, 0)
    backbone = resolve_backbone(tiny_text_dir)
    freeze(backbone, 2)
    top = make_encoder(backbone, X, len(backbone.blocks) - 2, cache=None, cache_prefix=True,
                       batch_size=3, device="cpu", progress=False)
    full = make_encoder(backbone, X, 0, cache=None, cache_prefix=True, batch_size=3,
                        device="cpu", progress=False)
    assert type(top).__name__ == "_TextTopEncoder"
    backbone.module.eval()
    np.testing.assert_allclose(embed(top, len(X), 3), embed(full, len(X), 3),
                               rtol=1e-4, atol=1e-5)
    # the model is restored after every cut forward pass
    assert len(backbone.module.model[0].auto_model.encoder.layer) == 3


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
    tuned = _contrastive(tiny_text_dir, unfreeze="all", contrastive_loss=kind,
                         pair_iterations=20, device="cpu").fit(X, y)
    assert tuned.history_[0, "contrastive_loss"] > 0
    assert _separation(tuned, X_test, y_test) > _separation(probe, X_test, y_test) + 0.05
    assert tuned.score(X_test, y_test) > max(0.55, probe.score(X_test, y_test))


def test_prefix_rows_are_shared_through_the_cache(tiny_text_dir):
    X, y = _sentences(6, 0)
    cache = FeatureCache()
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    misses = cache.misses
    assert misses == len(X)  # each sentence's frozen blocks ran once
    clone(clf).fit(X, y)  # another fit (CV fold, grid point): rows read back
    assert cache.misses == misses and cache.hits >= len(X)
    X_test, _ = _sentences(4, 2)
    cached = clf.predict_proba(X_test)  # top layers only, on cached rows
    uncached = clone(clf).set_params(cache=False).fit(X, y).predict_proba(X_test)
    np.testing.assert_allclose(cached, uncached, rtol=1e-4, atol=1e-5)
    # Chunk by chunk (token states held for one chunk at a time): the same.
    clf._text_reader.chunk_size = 3
    np.testing.assert_allclose(clf.predict_proba(X_test), cached, rtol=1e-5, atol=1e-6)


def test_a_large_input_predicted_in_chunks_does_not_flush_the_cache(tiny_text_dir):
    from sktl._cache import sample_hashes

    X, y = _sentences(6, 0)
    probe = FeatureCache()
    _contrastive(tiny_text_dir, cache=probe, pair_iterations=2).fit(X, y)
    cache = FeatureCache(max_bytes=4 * probe.nbytes)  # the training rows: a quarter
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    clf._text_reader.chunk_size = 3
    X_big, _ = _sentences(30, 3)  # five times the training rows
    clf.predict_proba(X_big)
    # Storing stopped at half the cache: the training rows are still there.
    rows = cache.lookup(clf._text_reader.key, sample_hashes(X))
    assert all(r is not None for r in rows)
    assert cache.nbytes <= cache.max_bytes


@pytest.mark.parametrize("read", ["pickle", "save", "backbone copy"])
def test_the_model_is_not_read_while_a_prediction_cuts_it(tiny_text_dir, monkeypatch, read,
                                                          tmp_path):
    """A reader prediction swaps the encoder's embeddings and layer list for
    a moment; pickling or reusing the model as a backbone meanwhile waits."""
    import contextlib
    import threading

    import sktl
    import sktl._contrastive as contrastive
    from sktl import FeatureExtractor

    X, y = _sentences(6, 0)
    # cache=True (the process's cache): a parameter sktl.save can write.
    clf = _contrastive(tiny_text_dir, cache=True, pair_iterations=2).fit(X, y)
    assert clf._text_reader is not None
    expected = clf.predict_proba(X)
    inside, release = threading.Event(), threading.Event()
    cut = contrastive._TextTopEncoder._cut

    @contextlib.contextmanager
    def slow_cut(self):
        with cut(self):
            inside.set()
            release.wait(10)
            yield

    monkeypatch.setattr(contrastive._TextTopEncoder, "_cut", slow_cut)
    predicting = threading.Thread(target=clf.predict_proba, args=(X,))
    predicting.start()
    assert inside.wait(10)
    copies = []
    if read == "pickle":
        target = lambda: copies.append(pickle.loads(pickle.dumps(clf)))
    elif read == "save":
        target = lambda: sktl.save(clf, tmp_path / "m")
    else:
        target = lambda: copies.append(
            FeatureExtractor(clf, cache=False).fit(X[:2]))
    reading = threading.Thread(target=target)
    reading.start()
    reading.join(0.5)
    assert reading.is_alive()  # waits for the prediction to put the model back
    release.set()
    predicting.join()
    reading.join()
    monkeypatch.undo()
    if read != "backbone copy":
        copy = copies[0] if read == "pickle" else sktl.load(tmp_path / "m")
        np.testing.assert_allclose(copy.predict_proba(X), expected, rtol=1e-4, atol=1e-5)
    else:
        z = FeatureExtractor(clf, cache=False).fit(X[:2]).transform(X)
        np.testing.assert_allclose(copies[0].transform(X), z, rtol=1e-5, atol=1e-6)


def test_token_states_beyond_the_memory_bound_are_not_held(tiny_text_dir, monkeypatch):
    """Past PREFIX_MAX_BYTES the fit runs through the frozen layers instead
    of holding every training sentence's token states; same model."""
    import sktl._prefix as prefix

    X, y = _sentences(6, 0)
    X_test, _ = _sentences(4, 2)
    backbone = resolve_backbone(tiny_text_dir)
    freeze(backbone, 2)
    kept = make_encoder(backbone, X, 2, cache=None, cache_prefix=True, batch_size=3,
                        device="cpu", progress=False)
    expected = _contrastive(tiny_text_dir, cache=False, pair_iterations=2).fit(X, y)
    monkeypatch.setattr(prefix, "PREFIX_MAX_BYTES", 1000)  # a few sentences' rows
    cache = FeatureCache()
    dropped = make_encoder(backbone, X, 2, cache=cache, cache_prefix=True, batch_size=3,
                           device="cpu", progress=False)
    assert type(kept).__name__ == "_TextTopEncoder"
    assert type(dropped).__name__ == "_Encoder" and cache.nbytes == 0
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    assert getattr(clf, "_text_reader", None) is None
    np.testing.assert_allclose(clf.predict_proba(X_test), expected.predict_proba(X_test),
                               rtol=1e-4, atol=1e-5)


def test_token_states_beyond_half_the_cache_are_not_stored(tiny_text_dir):
    X, y = _sentences(6, 0)
    cache = FeatureCache(max_bytes=2000)  # the states take more than half of it
    clf = _contrastive(tiny_text_dir, cache=cache, pair_iterations=2).fit(X, y)
    assert cache.nbytes == 0
    uncached = clone(clf).set_params(cache=False).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), uncached.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


def test_predictions_through_the_reader_take_its_lock(tiny_text_dir):
    import threading

    X, y = _sentences(6, 0)
    clf = _contrastive(tiny_text_dir, cache=FeatureCache(), pair_iterations=2).fit(X, y)
    done = threading.Event()
    with clf._text_reader.lock:  # another thread is reading through the cut model
        worker = threading.Thread(target=lambda: (clf.predict_proba(X[:2]), done.set()))
        worker.start()
        assert not done.wait(1.0)  # it waits its turn
    worker.join(30)
    assert done.is_set()


def test_concurrent_predictions_through_the_cached_prefix(tiny_text_dir):
    from concurrent.futures import ThreadPoolExecutor

    X, y = _sentences(6, 0)
    clf = _contrastive(tiny_text_dir, cache=FeatureCache(), pair_iterations=2).fit(X, y)
    tests = [_sentences(3, seed)[0] for seed in range(8)]
    expected = [clone(clf).set_params(cache=False).fit(X, y).predict_proba(t) for t in tests[:1]]
    # The reader cuts the shared model in place: threads must take turns.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(clf.predict_proba, tests * 3))
    np.testing.assert_allclose(results[0], expected[0], rtol=1e-4, atol=1e-5)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result, results[i % len(tests)], rtol=1e-5, atol=1e-6)


def test_verbose_shows_a_progress_bar(tiny_text_dir, capsys):
    X, y = _sentences(4, 0)
    _contrastive(tiny_text_dir, verbose=1, pair_iterations=2).fit(X, y)
    assert "contrastive" in capsys.readouterr().err


# -- scikit-learn integration ---------------------------------------------------------
def test_cross_validate_on_few_shot_data(tiny_text_dir):
    X, y = _sentences(8, 0)
    cv = StratifiedKFold(n_splits=4, shuffle=True, random_state=0)
    scores = cross_validate(_contrastive(tiny_text_dir, pair_sampling="pairs"), X, y, cv=cv)
    assert len(scores["test_score"]) == 4
    assert np.all(np.isfinite(scores["test_score"]))


def test_grid_search_over_strategy_params(tiny_text_dir):
    X, y = _sentences(8, 0)
    grid = {"strategy": ["finetune", "contrastive"], "contrastive_loss": ["cosine", "supcon"],
            "pair_iterations": [2, 5]}
    search = GridSearchCV(_contrastive(tiny_text_dir, max_epochs=2), grid,
                          cv=StratifiedKFold(2, shuffle=True, random_state=0)).fit(X, y)
    assert len(search.cv_results_["params"]) == 8
    assert search.best_estimator_.strategy in ("finetune", "contrastive")


def test_params_clone_and_pickle(tiny_text_dir):
    params = {"strategy": "contrastive", "pair_sampling": "pairs", "pair_iterations": 3,
              "contrastive_loss": "supcon", "contrastive_epochs": 2, "head_C": 0.5,
              "contrastive_schedule": "linear"}
    clf = TransferClassifier(tiny_text_dir, unfreeze=1, random_state=0, batch_size=8,
                             **params)
    assert {k: clf.get_params()[k] for k in params} == params
    assert {k: clone(clf).get_params()[k] for k in params} == params
    X, y = _sentences(5, 0)
    clf.fit(X, y)
    assert len(clf.history_) == 2
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


def test_gradient_trained_heads(tiny_text_dir):
    X, y = _sentences(6, 0)
    for params in [{"head_C": None}, {"head": "mlp"}]:
        clf = _contrastive(tiny_text_dir, max_epochs=3, **params).fit(X, y)
        assert "head_loss" in clf.history_[-1]
        assert clf.predict_proba(X).shape == (len(X), 2)


def test_contrastive_on_a_vector_backbone_uses_the_split_prefix(blobs):
    X, y = blobs
    clf = TransferClassifier(TinyNet(32), strategy="contrastive", unfreeze=1,
                             backbone_lr=1e-2, pair_iterations=5, random_state=0)
    assert clf.fit(X, y).score(X, y) > 0.9
    assert isinstance(clf.module_.head[0], nn.Module)


def test_split_prefix_beyond_the_memory_bound_is_not_held(blobs, monkeypatch):
    import sktl._prefix as prefix

    X, _ = blobs
    backbone = resolve_backbone(TinyNet(32))
    backbone.module(torch.zeros(1, X.shape[1]))  # materialise the lazy layer
    freeze(backbone, 1)
    run = {"cache": None, "cache_prefix": True, "batch_size": 16, "device": "cpu",
           "progress": False}
    assert type(make_encoder(backbone, X, 1, **run)).__name__ == "_SplitEncoder"
    monkeypatch.setattr(prefix, "PREFIX_MAX_BYTES", 32 * 4 * len(X) - 1)
    assert type(make_encoder(backbone, X, 1, **run)).__name__ == "_Encoder"


@pytest.mark.parametrize("params, match", [
    ({"unfreeze": 0}, "unfreeze=0"),
    ({"domain_loss": "coral"}, "domain_loss"),
    ({"strategy": "setfit"}, "strategy"),
    ({"pair_iterations": 0}, "pair_iterations"),
    ({"contrastive_loss": "triplet"}, "contrastive_loss"),
    ({"contrastive_schedule": "cosine"}, "contrastive_schedule"),
    ({"precision": "bf16"}, "precision='32'"),
    ({"batch_size": 2}, "needs batch_size > 2"),
])
def test_errors(tiny_text_dir, params, match):
    X, y = _sentences(4, 0)
    with pytest.raises(ValueError, match=match):
        _contrastive(tiny_text_dir, **params).fit(X, y)


def test_a_class_with_one_example_is_refused(tiny_text_dir):
    X, y = _sentences(4, 0)
    with pytest.raises(ValueError, match="at least 2 examples"):
        _contrastive(tiny_text_dir).fit(X[:5], y[:5])
    with pytest.raises(ValueError, match="only one class"):
        _contrastive(tiny_text_dir).fit(X[:4], y[:4])


# -- the real encoder -----------------------------------------------------------------
@pytest.mark.integration
def test_contrastive_beats_frozen_probe_on_few_shot_sst2(minilm_dir):
    """8 labelled sentences per class, 3 draws: the contrastive strategy
    (top 2 of 6 MiniLM layers) beats the frozen encoder + logistic
    regression on average (SetFit's finding)."""
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
        clf = TransferClassifier(minilm_dir, strategy="contrastive", unfreeze=2,
                                 batch_size=16, random_state=seed)
        tuned.append(clf.fit(X_few, y_few).score(X_test, y_test))
    assert np.mean(tuned) > np.mean(probe), (tuned, probe)
