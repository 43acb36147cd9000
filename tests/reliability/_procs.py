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


#: Child-script prelude (unindented: put it before a dedented script): a root
#: child gives up the capabilities that let root write to a read-only file or
#: folder, so that it is refused as any other user would be.
DROP_ROOT_FILE_POWERS = """
import ctypes, os, sys
if sys.platform == "linux" and os.geteuid() == 0:
    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    _libc = ctypes.CDLL(None, use_errno=True)
    _header, _data = _Header(0x20080522, 0), (_Data * 2)()  # capability API v3
    if _libc.capget(ctypes.byref(_header), _data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    _mask = ~((1 << 1) | (1 << 2) | (1 << 3))  # DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER
    _data[0].effective &= _mask
    _data[0].permitted &= _mask
    if _libc.capset(ctypes.byref(_header), _data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
"""


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
