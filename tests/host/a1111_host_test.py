"""The real-host check of the A1111 / Forge extension: runs a1111_driver.py against a web UI installation.

Skipped unless FLOWSR_A1111_DIR names a stable-diffusion-webui folder; FLOWSR_A1111_PYTHON names its Python
(default: the one running pytest); FLOWSR_A1111_HOST which web UI of the family it is (a1111, the default, or
reforge). FLOWSR_A1111_UPSCALER and FLOWSR_A1111_CHECKPOINT pick another FlowSR entry
than the built-in model (and its weights file, for the comparison with the CLI). A few minutes on a CPU.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

A1111 = os.environ.get("FLOWSR_A1111_DIR")


@pytest.mark.skipif(not A1111, reason="set FLOWSR_A1111_DIR to a stable-diffusion-webui folder to run the real-host check")
def test_flowsr_upscales_in_real_a1111(tmp_path):
    driver = Path(__file__).with_name("a1111_driver.py")
    command = [sys.executable, str(driver), "--a1111", A1111, "--out", str(tmp_path),
               "--python", os.environ.get("FLOWSR_A1111_PYTHON", sys.executable),
               "--host", os.environ.get("FLOWSR_A1111_HOST", "a1111")]
    if os.environ.get("FLOWSR_A1111_UPSCALER"):
        command += ["--upscaler", os.environ["FLOWSR_A1111_UPSCALER"]]
    if os.environ.get("FLOWSR_A1111_CHECKPOINT"):
        command += ["--checkpoint", os.environ["FLOWSR_A1111_CHECKPOINT"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "0 failed" in (tmp_path / "report.md").read_text()
