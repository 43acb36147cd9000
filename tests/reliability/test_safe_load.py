"""``sktl.save`` / ``sktl.load`` keep their promise: a save loads without
running code that it names, never as a silently different model, and
replacing a save is atomic (``kill -9`` at any moment leaves the previous
save or the new one, both loadable).

Most saves here use ``torch.nn.Flatten`` as the backbone: a class that
``sktl.load`` trusts by default, so that each test exercises what it names
(and ran against the code before these guarantees, fails for that reason).
"""

import json
import os
import pickle
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from _procs import finish, spawn
from conftest import TinyNet
from sklearn.utils._param_validation import InvalidParameterError

import sktl
from sktl import FeatureExtractor, TransferClassifier
from sktl.exceptions import SaveFormatError, SaveIntegrityError, UntrustedTypeError


def _fit(X, y, seed=0, backbone=torch.nn.Flatten):
    return TransferClassifier(backbone, max_epochs=2, random_state=seed).fit(X, y)


@pytest.fixture
def saved(blobs, tmp_path):
    """A classifier on a trusted backbone, saved to ``tmp_path / "model"``."""
    X, y = blobs
    clf = _fit(X, y)
    sktl.save(clf, tmp_path / "model")
    return tmp_path / "model", clf, X


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def _write_config(folder, config):
    (folder / "config.json").write_text(json.dumps(config))


def _weights(folder):
    (path,) = folder.glob("model*.safetensors")
    return path


# -- item 1: nothing is imported or built that the caller did not trust ---------
LOAD_IN_CHILD = """
import json, sys
import sktl
before = set(sys.modules)
try:
    sktl.load(sys.argv[1])
    error = None
except Exception as exc:
    error = [type(exc).__name__, str(exc)]
print(json.dumps({"error": error, "imported": sorted(set(sys.modules) - before)}))
"""

EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("this module ran")
import torch
class {name}(torch.nn.Module):
    def forward(self, x):
        return x
"""


def _load_in_child(folder, cwd):
    """Load ``folder`` in a child whose working directory is ``cwd``, where
    a module written there is importable; the error and the new modules."""
    out = finish(spawn(LOAD_IN_CHILD, folder, cwd=cwd))
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("ref, module, name", [("evil_backbone:Net", "evil_backbone", "Net"),
                                               ("this:Nope", "this", "Nope")])
def test_a_backbone_class_outside_the_trusted_packages_is_never_imported(
        saved, tmp_path, ref, module, name):
    folder, _, _ = saved
    marker = tmp_path / "ran.txt"
    # Beside the save, and importable from the child's working directory.
    (tmp_path / "evil_backbone.py").write_text(EVIL_MODULE.format(marker=str(marker), name="Net"))
    config = _config(folder)
    config["backbone"]["class"] = ref
    _write_config(folder, config)
    result = _load_in_child(folder, cwd=tmp_path)
    assert not marker.exists()
    assert module not in result["imported"]
    kind, message = result["error"]
    assert kind == "UntrustedTypeError"
    assert repr(ref) in message and f"trusted=[{name}]" in message


def test_a_class_of_the_caller_is_loaded_only_when_trusted(blobs, tmp_path):
    X, y = blobs
    clf = _fit(X, y, backbone=TinyNet)
    sktl.save(clf, tmp_path / "model")
    with pytest.raises(UntrustedTypeError, match=r"'conftest:TinyNet'.*trusted=\[TinyNet\]"):
        sktl.load(tmp_path / "model")

    class Impostor(torch.nn.Module):  # same name, another module: not the trusted class
        pass

    Impostor.__qualname__ = "TinyNet"
    with pytest.raises(UntrustedTypeError, match="conftest:TinyNet"):
        sktl.load(tmp_path / "model", trusted=[Impostor])
    with pytest.raises(TypeError, match="takes classes"):
        sktl.load(tmp_path / "model", trusted=["conftest:TinyNet"])
    loaded = sktl.load(tmp_path / "model", trusted=[TinyNet])
    assert loaded.backbone is TinyNet
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_a_sentence_transformers_folder_naming_a_foreign_module_is_refused(
        minilm_dir, tmp_path):
    """``SentenceTransformer(folder)`` imports the types ``modules.json`` lists:
    they are checked before it is built."""
    encoder = tmp_path / "encoder"
    shutil.copytree(minilm_dir, encoder, copy_function=os.symlink)  # the weights stay put
    modules_json = encoder / "modules.json"
    modules = json.loads(modules_json.read_text())
    modules_json.unlink()
    modules_json.write_text(json.dumps(modules))
    texts = ["a good film", "a dull film"]
    fe = FeatureExtractor(str(encoder), cache=False).fit(texts)
    sktl.save(fe, tmp_path / "model")
    # sentence-transformers' own module classes are trusted by default.
    np.testing.assert_allclose(sktl.load(tmp_path / "model").transform(texts),
                               fe.transform(texts), rtol=1e-5, atol=1e-6)
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_pooling.py").write_text(EVIL_MODULE.format(marker=str(marker),
                                                                 name="Pooling"))
    modules[1]["type"] = "evil_pooling.Pooling"
    modules_json.write_text(json.dumps(modules))
    result = _load_in_child(tmp_path / "model", cwd=tmp_path)
    assert not marker.exists()
    assert "evil_pooling" not in result["imported"]
    kind, message = result["error"]
    assert kind == "UntrustedTypeError"
    assert "'evil_pooling.Pooling'" in message and "trusted=[Pooling]" in message


def test_sentence_transformers_are_built_with_trust_remote_code_false(minilm_dir, monkeypatch):
    """Said explicitly, whatever the sentence-transformers version's default."""
    import sentence_transformers

    from sktl.backbones._sentence_transformers import load_sentence_transformer

    seen = {}
    real = sentence_transformers.SentenceTransformer

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", spy)
    load_sentence_transformer(minilm_dir)
    assert seen.get("trust_remote_code") is False


@pytest.mark.parametrize("edit, error, match", [
    (lambda c: c.update(estimator="SVC"), SaveFormatError,
     "'SVC'.*FeatureExtractor, TransferClassifier, TransferDetector, TransferRegressor"),
    (lambda c: c["params"].update(unfreeze=-3), InvalidParameterError, "unfreeze"),
    (lambda c: c["params"].update(kernel="rbf"), SaveFormatError, r"unknown parameters \['kernel'\]"),
    (lambda c: c["params"].update(backbone="resnet18"), SaveFormatError, "backbone"),
    (lambda c: c["fitted"].update(coef_=[1.0]), SaveFormatError, r"fitted attributes \['coef_'\]"),
    (lambda c: c["fitted"].update(classes_={"__ndarray__": [{"a": 1}, 2], "dtype": "|O"}),
     SaveFormatError, "classes_.*numbers, booleans or strings"),
    (lambda c: c["backbone"].update(hook="os:system"), SaveFormatError, "keys"),
    (lambda c: c["backbone"].update({"class": "torch.nn:Module.__init__"}), SaveFormatError,
     "not a class path"),
])
def test_a_config_that_save_does_not_write_is_refused(saved, edit, error, match):
    folder, _, _ = saved
    config = _config(folder)
    edit(config)
    _write_config(folder, config)
    with pytest.raises(error, match=match):
        sktl.load(folder)


# -- item 2: every file matches its hash ------------------------------------------
def _flip_a_bit(path, other):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # in the last tensor's data: still a valid safetensors file
    path.write_bytes(bytes(data))


def _take_another_saves(path, other):
    path.write_bytes(_weights(other).read_bytes())


def _truncate(path, other):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _remove(path, other):
    path.unlink()


@pytest.mark.parametrize("damage", [_flip_a_bit, _take_another_saves, _truncate, _remove])
def test_a_damaged_weights_file_is_an_error_not_another_model(saved, blobs, tmp_path, damage):
    folder, _, _ = saved
    X, y = blobs
    sktl.save(_fit(X, y, seed=1), tmp_path / "other")  # same architecture, other weights
    damage(_weights(folder), tmp_path / "other")
    with pytest.raises(SaveIntegrityError, match="sha256|missing"):
        sktl.load(folder)


# -- item 5: save is atomic, and never overwrites the user's files ------------------
SAVE_SLOWLY = """
import os, pathlib, pickle, sys, time
import sktl
import sktl.persistence

def slow(call):
    def wrapper(*args, **kwargs):
        time.sleep(0.15)
        out = call(*args, **kwargs)
        time.sleep(0.15)
        return out
    return wrapper

# Every step a save may take is slow, so that kills land between them.
os.replace, os.fsync = slow(os.replace), slow(os.fsync)
pathlib.Path.write_text, pathlib.Path.unlink = slow(pathlib.Path.write_text), slow(pathlib.Path.unlink)
sktl.persistence.save_model = slow(sktl.persistence.save_model)
with open(sys.argv[2], "rb") as fh:
    model = pickle.load(fh)
print("saving", flush=True)
start = time.monotonic()
sktl.save(model, sys.argv[1])
print(time.monotonic() - start, flush=True)
"""


def test_a_save_killed_at_any_moment_leaves_the_old_save_or_the_new(blobs, tmp_path):
    X, y = blobs
    a = _fit(X, y % 2)                                     # classes 0, 1
    b = _fit(X, np.array(["x", "y", "z"])[y], seed=1)      # classes x, y, z
    expected = {"A": a.predict_proba(X), "B": b.predict_proba(X)}
    sktl.save(a, tmp_path / "A")
    with open(tmp_path / "B.pkl", "wb") as fh:
        pickle.dump(b, fh)

    def save_b_over_a(folder, kill_after=None):
        shutil.copytree(tmp_path / "A", folder)
        child = spawn(SAVE_SLOWLY, folder, tmp_path / "B.pkl")
        assert child.stdout.readline().strip() == "saving"
        if kill_after is None:
            return float(finish(child))
        time.sleep(kill_after)
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=60)
        return None

    duration = save_b_over_a(tmp_path / "whole")
    outcomes = []
    for i, delay in enumerate(np.linspace(0.03, 1.0, 9) * duration):
        folder = tmp_path / f"killed{i}"
        save_b_over_a(folder, kill_after=delay)
        loaded = sktl.load(folder)
        proba = loaded.predict_proba(X)
        match = [k for k, v in expected.items() if v.shape == proba.shape
                 and np.array_equal(v, proba)]
        assert len(match) == 1, f"killed after {delay:.2f} s: neither A nor B"
        outcomes.append(match[0])
        # The next save into the folder finishes the job and tidies up.
        sktl.save(b, folder)
        assert len(list(folder.iterdir())) == 2
    assert {"A", "B"} <= set(outcomes), outcomes  # the kills hit both sides of the swap
    assert np.array_equal(sktl.load(tmp_path / "whole").predict_proba(X), expected["B"])


def test_save_refuses_a_folder_of_the_users_files(saved, tmp_path):
    _, clf, _ = saved
    folder = tmp_path / "mine"
    folder.mkdir()
    files = {"config.json": '{"lr": 0.1}', "notes.txt": "my notes"}
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(FileExistsError, match="holds no sktl save"):
        sktl.save(clf, folder)
    assert {p.name: p.read_text() for p in folder.iterdir()} == files


def test_saving_over_a_save_removes_only_its_own_files(saved, blobs):
    folder, _, X = saved
    _, y = blobs
    old = _weights(folder)
    (folder / "README.txt").write_text("kept")
    (folder / "my-model.safetensors").write_text("kept too")
    b = _fit(X, np.array(["x", "y", "z"])[y], seed=1)
    sktl.save(b, folder)
    assert not old.exists()
    new = _weights(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["README.txt", "config.json", "my-model.safetensors", new.name])
    np.testing.assert_array_equal(sktl.load(folder).predict_proba(X), b.predict_proba(X))


# -- the format version ------------------------------------------------------------
def test_another_format_version_is_refused(saved):
    folder, _, _ = saved
    config = _config(folder)
    config["format"] = 2
    _write_config(folder, config)
    with pytest.raises(SaveFormatError, match="format 2.*reads format 1"):
        sktl.load(folder)


def test_a_save_without_format_or_hashes_is_refused_and_can_be_replaced(saved):
    """Folders written before the format version (no hashes) are not loaded
    unchecked; saving over one replaces its weights file."""
    folder, clf, X = saved
    config = _config(folder)
    for key in ("saved_by", "format", "weights", "files"):
        del config[key]
    _write_config(folder, config)
    _weights(folder).rename(folder / "model.safetensors")
    with pytest.raises(SaveFormatError, match="without a format version"):
        sktl.load(folder)
    sktl.save(clf, folder)
    assert not (folder / "model.safetensors").exists()
    np.testing.assert_array_equal(sktl.load(folder).predict_proba(X), clf.predict_proba(X))
