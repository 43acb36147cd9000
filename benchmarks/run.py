#!/usr/bin/env python
"""Run one sktl benchmark and print its figures.

Usage::

    python benchmarks/run.py --list          # names and descriptions
    python benchmarks/run.py core            # full size
    python benchmarks/run.py core --quick    # reduced size (smoke test)

A benchmark ``NAME`` is the module ``benchmarks/bench_NAME.py``. It exposes
``run(quick: bool) -> dict`` and a module docstring whose first line is its
description. It may also expose ``table(result) -> (header, rows)`` to choose
how its figures are shown; otherwise every scalar is shown as key / value.

The output is a readable table, then, as the LAST line of stdout, one JSON
object: ``json.dumps(result)``. Scripts read it with
``json.loads(stdout.splitlines()[-1])``.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers: never reach the
# network, use local folders and caches only.
os.environ["HF_HUB_OFFLINE"] = "1"
# Before torch loads its OpenMP runtime: idle OpenMP threads sleep instead of
# spinning. With the default (active) policy, a run that shares the CPUs with
# any other busy process slows down several-fold and erratically (measured
# here: a resnet18 forward went from 0.13 s to 1.0 s with 2 threads on 2
# cores); both sides of every comparison run under the same policy. Set
# OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import ast
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PREFIX = "bench_"

# The data loaders default to ``../shared/data`` relative to the current
# directory; anchor that default at the repository so that the runner works
# from any directory (identical to the loader default when run from the
# repository root). An explicit SKTL_DATA always wins.
if not os.environ.get("SKTL_DATA"):
    os.environ["SKTL_DATA"] = os.path.normpath(REPO_DIR / os.pardir / "shared" / "data")


def available():
    """``{name: path}`` of every ``bench_NAME.py`` next to this file."""
    return {p.stem[len(PREFIX):]: p for p in sorted(BENCH_DIR.glob(f"{PREFIX}*.py"))}


def description(path):
    """First line of a module's docstring, read without importing it."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except SyntaxError as exc:
        return f"(cannot parse: {exc})"
    return doc.strip().splitlines()[0] if doc else "(no description)"


def load(name, path):
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))  # shared helpers: benchmarks/_*.py
    spec = importlib.util.spec_from_file_location(f"{PREFIX}{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise SystemExit(f"{path} does not define run(quick: bool) -> dict")
    return module


# -- output -------------------------------------------------------------------
def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def format_table(header, rows):
    cells = [[str(h) for h in header]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        # first column left-aligned (labels), the others right-aligned (numbers)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def default_table(result):
    rows = [(k, v) for k, v in result.items()
            if isinstance(v, (int, float, str, bool)) or v is None]
    return ("key", "value"), rows


def _jsonable(value):
    """numpy scalars/arrays -> builtins; NaN/inf -> None (strict JSON)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# -- main ---------------------------------------------------------------------
def main(argv=None):
    benches = available()
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Run the sktl benchmark benchmarks/bench_NAME.py; the last "
                    "line of stdout is its result as one JSON object.")
    parser.add_argument("name", nargs="?", help="benchmark name (see --list)")
    parser.add_argument("--list", action="store_true", help="list benchmarks and exit")
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes and repetitions (smoke test)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads(N) before running "
                             "(default: torch's own choice)")
    args = parser.parse_args(argv)

    if args.list:
        width = max((len(n) for n in benches), default=4)
        for name, path in benches.items():
            print(f"{name.ljust(width)}  {description(path)}")
        return 0
    if not args.name:
        parser.error("give a benchmark name, or --list")
    if args.name not in benches:
        parser.error(f"unknown benchmark {args.name!r}; available: "
                     f"{', '.join(benches) or '(none)'}")

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    import sktl
    from sktl.datasets import get_data_home

    module = load(args.name, benches[args.name])
    print(f"benchmark {args.name}: {description(benches[args.name])}")
    print(f"  mode={'quick' if args.quick else 'full'}  sktl {sktl.__version__}  "
          f"torch {torch.__version__}  python {platform.python_version()}  "
          f"threads={torch.get_num_threads()}  cpus={os.cpu_count()}  "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"  data home: {get_data_home()}")
    if hasattr(os, "getloadavg"):
        print(f"  load average before: {os.getloadavg()[0]:.2f}")
    sys.stdout.flush()

    start = time.perf_counter()
    result = module.run(quick=args.quick)
    elapsed = time.perf_counter() - start

    table = getattr(module, "table", default_table)
    header, rows = table(result)
    print()
    print(format_table(header, rows))
    print()
    load_note = ""
    if hasattr(os, "getloadavg"):
        load_note = f", load average after: {os.getloadavg()[0]:.2f}"
    print(f"{args.name} finished in {elapsed:.1f} s{load_note}")
    print(json.dumps(_jsonable(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
