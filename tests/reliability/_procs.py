"""Child processes for the fault-injection and adversarial tests.

Process-level faults (``kill -9``, SIGINT, several writers) run in child
Python processes started by :func:`spawn`, never in the pytest process.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sktl

TESTS = Path(__file__).resolve().parents[1]


def child_env(**extra):
    """The environment of a child: it imports sktl and the tests' conftest
    from this checkout, installed or not, and never reaches the hub."""
    roots = [str(Path(sktl.__file__).resolve().parents[1]), str(TESTS)]
    path = os.pathsep.join(roots + [os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def spawn(script, *args, **popen):
    """Start ``python -c script args...`` as a child process (text pipes)."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                            env=child_env(), text=True, **popen)


def finish(proc, timeout=180):
    """Wait for a child; return its stdout, failing with its stderr if it failed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"child timed out after {timeout} s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{err[-3000:]}"
    return out
