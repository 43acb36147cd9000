"""The documentation site builds with warnings as errors, examples run.

Sphinx with numpydoc (API reference), MyST (the Markdown user guide) and
sphinx-gallery, which executes ``examples/plot_*.py`` and keeps their
figures. Needs the ``docs`` extra (CI installs it).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_IN_DOCS = r"/plot_(?!sentiment_transfer)"

pytest.importorskip("sphinx", reason="docs extra not installed: pip install -e '.[docs]'")
pytest.importorskip("sphinx_gallery", reason="docs extra not installed")


@pytest.mark.integration
def test_docs_build_with_warnings_as_errors(tmp_path):
    # The sentiment walkthrough runs once, as a notebook (below), not twice.
    env = {**os.environ, "MPLBACKEND": "Agg", "SKTL_DOCS_RUN_EXAMPLES": "True",
           "SKTL_DOCS_EXAMPLES": RUN_IN_DOCS}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    html = tmp_path / "html"
    for page in ["index.html", "user_guide.html", "api.html", "benchmarks.html",
                 "generated/sktl.TransferClassifier.html",
                 "generated/sktl.DistillationClassifier.html"]:
        assert (html / page).is_file(), page
    # Every gallery example ran and produced at least one figure.
    for example in sorted((ROOT / "examples").glob("plot_*.py")):
        if example.stem == "plot_sentiment_transfer":
            continue
        figures = list((html / "_images").glob(f"sphx_glr_{example.stem}_0*.png"))
        assert figures, f"{example.name} produced no figure"


NOTEBOOK = ROOT / "examples" / "plot_sentiment_transfer.ipynb"


def _cell_sources(path):
    import nbformat

    return [(c.cell_type, c.source.strip()) for c in nbformat.read(str(path), as_version=4).cells]


def test_notebook_is_generated_from_its_script(tmp_path):
    """The committed notebook is the sphinx-gallery conversion of the script
    (one source of truth); regenerate it with
    ``python -c "from sphinx_gallery.notebook import python_to_jupyter_cli as c;
    c(['examples/plot_sentiment_transfer.py'])"``."""
    from sphinx_gallery.notebook import python_to_jupyter_cli

    script = tmp_path / "plot_sentiment_transfer.py"
    script.write_text((ROOT / "examples" / script.name).read_text())
    python_to_jupyter_cli([str(script)])
    assert _cell_sources(NOTEBOOK) == _cell_sources(script.with_suffix(".ipynb"))


@pytest.mark.integration
def test_sentiment_notebook_executes(monkeypatch):
    """Runs the walkthrough notebook top to bottom in a fresh kernel."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    # The kernel inherits the environment: figures go inline, as in Jupyter.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The kernel runs in examples/: make the data folder's default absolute.
    monkeypatch.setenv("SKTL_DATA", os.environ.get("SKTL_DATA")
                       or str((ROOT.parent / "shared" / "data").resolve()))
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "examples")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "distilled 1-layer student" in text and "frozen probe" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure displayed"


def test_estimators_have_an_html_repr():
    """What a notebook shows for an estimator: sklearn's HTML diagram."""
    from sklearn.pipeline import make_pipeline

    from sktl import DistillationClassifier, FeatureExtractor, TransferClassifier

    html = make_pipeline(FeatureExtractor("resnet18"),
                         TransferClassifier("resnet18", unfreeze=2))._repr_html_()
    assert "FeatureExtractor" in html and "TransferClassifier" in html
    assert "unfreeze" in html  # the parameters that differ from the defaults
    assert "DistillationClassifier" in DistillationClassifier(
        TransferClassifier(), TransferClassifier())._repr_html_()
