"""The README's main command, ``python -m sktl``: the demo runs offline, end to end."""

import os
import re
import subprocess
import sys


def test_python_m_sktl_runs_the_demo_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "sktl"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for step in ("1. prepare", "2. pretrain on the source", "3. fine-tune on the target"):
        assert step in out
    # Three methods scored on the held-out target digits, all well above chance (0.2).
    accuracies = [float(a) for a in re.findall(r"^  .* (\d\.\d{3})$", out, re.MULTILINE)]
    assert len(accuracies) == 3 and min(accuracies) > 0.5, out
