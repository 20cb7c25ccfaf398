"""The real-host check of the ComfyUI node pack: runs comfyui_driver.py against a ComfyUI installation.

Skipped unless FLOWSR_COMFYUI_DIR names a ComfyUI folder; FLOWSR_COMFYUI_PYTHON names its Python (default:
the one running pytest); FLOWSR_COMFYUI_BROWSER names a Chromium to also check ComfyUI's page in (playwright
must then be installed in that Python). Takes a few minutes on a CPU.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

COMFYUI = os.environ.get("FLOWSR_COMFYUI_DIR")


@pytest.mark.skipif(not COMFYUI, reason="set FLOWSR_COMFYUI_DIR to a ComfyUI folder to run the real-host check")
def test_workflows_run_in_real_comfyui(tmp_path):
    driver = Path(__file__).with_name("comfyui_driver.py")
    python = os.environ.get("FLOWSR_COMFYUI_PYTHON", sys.executable)
    command = [python, str(driver), "--comfyui", COMFYUI, "--out", str(tmp_path)]
    if os.environ.get("FLOWSR_COMFYUI_BROWSER"):
        command += ["--browser", os.environ["FLOWSR_COMFYUI_BROWSER"]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "0 failed" in (tmp_path / "report.md").read_text()
