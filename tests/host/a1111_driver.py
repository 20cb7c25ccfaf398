"""Runs the FlowSR extension in a real web UI of the A1111 family: install, start headless, upscale, interrupt.

    python tests/host/a1111_driver.py --a1111 /path/to/stable-diffusion-webui --python /path/to/its/venv/bin/python

``--host reforge`` for reForge (the flags it needs on the CPU: HOST_FLAGS).

Any Python runs this script (standard library only); ``--python`` is the web UI's own. The driver links this
repository into ``extensions/`` (unless an entry there already points to it), runs ``install.py`` the way
A1111's launcher does (twice: the second run must change nothing), starts ``launch.py --api --nowebui
--skip-prepare-environment --skip-torch-cuda-test --use-cpu all --no-download-sd-model
--skip-load-model-at-start --no-half`` on 127.0.0.1, and checks:

- the extension's script and preload loaded (no error for them in the log) and ``GET /sdapi/v1/upscalers``
  lists "FlowSR 4x", "FlowSR 2x" and the built-in model's entry;
- the FlowSR settings exist in API-only mode (``GET/POST /sdapi/v1/options``);
- without ``flowsr.safetensors`` in models/FlowSR, "FlowSR 4x" fails with a message naming that folder;
- ``POST /sdapi/v1/extra-single-image`` at scales 2, 4 and 3 returns A1111's target size, and the pixels are
  exactly those of ``python -m flowsr upscale`` at the same scale (one FlowSR pass, no second one), not a
  plain Lanczos resize;
- ``POST /sdapi/v1/interrupt`` during a many-tile upscale stops it at the network call under way, A1111
  answers with its own resize, and the next request works again;
- ``POST /sdapi/v1/extra-batch-images`` (Extras' batch, the other postprocessing path) gives each image its
  target size;
- bad values of FlowSR settings (BAD_SETTINGS), posted or already in config.json at the start, are refused or
  reset with one log line each and no traceback, and ``GET /sdapi/v1/options`` still answers;
- an interrupt during the long upscale of issue 24 stops FlowSR within CANCEL_DELAY_LIMIT_S, and
  ``/sdapi/v1/progress`` never says 1.0 before the last network call (its own offset aside: API_OFFSET_DONE);
- the console shows one progress line per upscale.

Results go to ``--out`` (report.json, report.md, the server log, the images). Exit status 0 when all passed.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Callable, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTENSION_FOLDER = "flowsr"
BUILTIN_ENTRY = "FlowSR tiny (built-in) 4x"
SERVER_FLAGS = ["--api", "--nowebui", "--skip-prepare-environment", "--skip-torch-cuda-test", "--use-cpu", "all",
                "--no-download-sd-model", "--skip-load-model-at-start", "--no-half"]
#: Each host of the family, with the flags it needs beyond SERVER_FLAGS to run headless on the CPU: reForge's
#: own model management (ldm_patched) asks CUDA for the device at import unless told --always-cpu.
HOST_FLAGS = {"a1111": [], "reforge": ["--always-cpu"]}
#: How long FlowSR may take to stop after POST /sdapi/v1/interrupt has answered (issue 24: about a second).
CANCEL_DELAY_LIMIT_S = 1.0
#: The share of a job done from which /sdapi/v1/progress answers 1.0 whatever the job (0.01 + share, clamped).
API_OFFSET_DONE = 0.99
#: The issue's long upscale: at x4 on the CPU the automatic tile is the whole image, a few long network calls.
LONG_UPSCALE_SIZE = (768, 576)
#: Values that real A1111 1.10.1 stored before they were checked, after which GET /sdapi/v1/options answered 500.
BAD_SETTINGS = {"flowsr_keep_loaded": "maybe", "flowsr_settings_version": "zzz", "flowsr_steps": 99,
                "flowsr_tile_size": "big", "flowsr_base_model": 21}
#: Their defaults, which a bad saved value is reset to.
DEFAULT_SETTINGS = {"flowsr_keep_loaded": True, "flowsr_settings_version": 2, "flowsr_steps": 1, "flowsr_tile_size": -1,
                    "flowsr_base_model": ""}
SCALES = (2, 4, 3)


# ------------------------------------------------------------------------------------ PNG, stdlib only

def png_bytes(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in pixel(x, y)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_picture(width: int, height: int) -> bytes:
    """Gradients, a checkerboard and a ring: edges and flat areas for an upscaler to work on."""
    def pixel(x: int, y: int) -> tuple[int, int, int]:
        ring = abs(((x - width / 2) ** 2 + (y - height / 2) ** 2) ** 0.5 - min(width, height) / 3) < 2
        checker = ((x // 6) + (y // 6)) % 2
        return (255 if ring else x * 255 // width, y * 255 // height, 200 * checker + 30)
    return png_bytes(width, height, pixel)


def png_size(data: bytes) -> tuple[int, int]:
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def png_pixels(python: str, data: bytes) -> bytes:
    """Decoded RGB bytes, via Pillow in the web UI's Python (the PNG encoders differ, the pixels must not)."""
    code = "import sys, io; from PIL import Image; sys.stdout.buffer.write(Image.open(io.BytesIO(sys.stdin.buffer.read())).convert('RGB').tobytes())"
    return subprocess.run([python, "-c", code], input=data, capture_output=True, check=True).stdout


# --------------------------------------------------------------------------------------------- server

class Server:
    """An A1111 process of our own on 127.0.0.1 and the API calls the checks need."""

    def __init__(self, a1111: Path, python: str, port: int, log: Path, host: str = "a1111"):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.flowsr_upscales = 0  # answered upscales that ran FlowSR (each draws a console bar)
        command = [python, "launch.py", *SERVER_FLAGS, *HOST_FLAGS[host], "--server-name", "127.0.0.1",
                   "--port", str(port)]
        self.process = subprocess.Popen(command, cwd=a1111, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def call(self, method: str, path: str, body: Optional[dict] = None, timeout: float = 900) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, text

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"A1111 exited with {self.process.returncode}; see {self.log}")
            try:
                if self.call("GET", "/sdapi/v1/upscalers", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"A1111 did not answer within {timeout:.0f} s; see {self.log}")

    def upscale(self, image: bytes, scale: float, upscaler: str) -> tuple[int, Any, float]:
        started = time.time()
        status, reply = self.call("POST", "/sdapi/v1/extra-single-image", {
            "image": base64.b64encode(image).decode(), "resize_mode": 0, "upscaling_resize": scale,
            "upscaler_1": upscaler})
        if status == 200:
            reply = base64.b64decode(reply["image"])
            self.flowsr_upscales += upscaler.startswith("FlowSR")
        return status, reply, time.time() - started

    def upscale_batch(self, images: list[bytes], scale: float, upscaler: str) -> tuple[int, Any]:
        status, reply = self.call("POST", "/sdapi/v1/extra-batch-images", {
            "imageList": [{"data": base64.b64encode(image).decode(), "name": f"{n}.png"} for n, image in
                          enumerate(images)], "resize_mode": 0, "upscaling_resize": scale, "upscaler_1": upscaler})
        if status == 200:
            reply = [base64.b64decode(image) for image in reply["images"]]
            self.flowsr_upscales += len(images) * upscaler.startswith("FlowSR")
        return status, reply

    def log_text(self) -> str:
        with self.log.open(errors="replace", newline="") as log:  # keeps the console's carriage returns
            return log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------- checks

class Report:
    def __init__(self, out: Path):
        self.out, self.checks, self.facts = out, [], {}

    def check(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return bool(ok)

    def write(self) -> int:
        failed = sum(not c["ok"] for c in self.checks)
        (self.out / "report.json").write_text(json.dumps({"facts": self.facts, "checks": self.checks}, indent=2))
        lines = ["# FlowSR in a web UI of the A1111 family", ""] + [f"- {k}: {v}" for k, v in self.facts.items()] + [""]
        lines += [f"- {'PASS' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}" for c in self.checks]
        lines += ["", f"{len(self.checks) - failed} passed, {failed} failed"]
        (self.out / "report.md").write_text("\n".join(lines) + "\n")
        print(lines[-1])
        return 1 if failed else 0


def link_extension(a1111: Path) -> Path:
    for entry in (a1111 / "extensions").iterdir():
        if entry.resolve() == REPO_ROOT:
            return entry
    link = a1111 / "extensions" / EXTENSION_FOLDER
    if link.exists() or link.is_symlink():
        raise RuntimeError(f"{link} exists and is not this repository; move it away or link this one yourself")
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def run_installer(a1111: Path, python: str, extension: Path) -> subprocess.CompletedProcess:
    """As launch_utils.run_extension_installer: the web UI's folder on PYTHONPATH, from the web UI's folder."""
    env = {**os.environ, "PYTHONPATH": f"{a1111}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([python, str(extension / "install.py")], cwd=a1111, env=env, capture_output=True,
                          text=True, timeout=1800)


def flowsr_cli(python: str, image: Path, output: Path, scale: float, checkpoint: Optional[str]) -> None:
    command = [python, "-m", "flowsr", "upscale", str(image), "-o", str(output), "--scale", str(scale),
               "--device", "cpu", "--dtype", "fp32"] + (["--checkpoint", checkpoint] if checkpoint else [])
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, timeout=1800)


def a1111_target(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return int(size[0] * scale // 8 * 8), int(size[1] * scale // 8 * 8)


def check_scales(report: Report, server: Server, python: str, upscaler: str, checkpoint: Optional[str]) -> None:
    image = test_picture(64, 48)
    (report.out / "input.png").write_bytes(image)
    for scale in SCALES:
        status, reply, seconds = server.upscale(image, scale, upscaler)
        if not report.check(f"extra-single-image x{scale} answered", status == 200, reply if status != 200 else ""):
            continue
        (report.out / f"flowsr_x{scale}.png").write_bytes(reply)
        target = a1111_target((64, 48), scale)
        report.check(f"x{scale} size is A1111's target {target}", png_size(reply) == target,
                     f"{png_size(reply)} in {seconds:.1f} s")
        expected = report.out / f"cli_x{scale}.png"
        flowsr_cli(python, report.out / "input.png", expected, scale, checkpoint)
        same = png_pixels(python, reply) == png_pixels(python, expected.read_bytes())
        report.check(f"x{scale} equals one `python -m flowsr upscale --scale {scale}` pass", same)
        _, lanczos, _ = server.upscale(image, scale, "Lanczos")
        report.check(f"x{scale} is not a plain Lanczos resize", png_pixels(python, reply) != png_pixels(python, lanczos))


def progress_state(server: Server) -> dict:
    return server.call("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=30)[1]["state"]


def wait_for_first_calls(server: Server, worker: threading.Thread, last_job: str, timeout: float = 300) -> dict:
    """A1111's job state once the upscale in ``worker`` has made its first network call."""
    deadline = time.time() + timeout
    state = progress_state(server)
    while worker.is_alive() and time.time() < deadline:
        if state["job_timestamp"] != last_job and state["sampling_step"] >= 1:  # this job's calls, not the last's
            break
        time.sleep(0.05)
        state = progress_state(server)
    return state


def check_interrupt(report: Report, server: Server, upscaler: str) -> None:
    """Interrupt a many-tile upscale while it runs, and count the network calls made after the interrupt.

    FlowSR looks for an interrupt before each call, so once POST /sdapi/v1/interrupt has answered, the call
    under way is the last: where the job stopped must be the count read right after the interrupt, or one
    more. Counts, not a clock: the tiny model makes about 1000 calls a second on a fast CPU.
    """
    server.call("POST", "/sdapi/v1/options", {"flowsr_tile_size": 16})
    image = test_picture(128, 128)
    last_job = progress_state(server)["job_timestamp"]
    time.sleep(1.1)  # job timestamps have whole seconds
    answer: dict = {}

    def request() -> None:
        answer["status"], answer["image"], answer["seconds"] = server.upscale(image, 4, upscaler)

    worker = threading.Thread(target=request)
    worker.start()
    before = wait_for_first_calls(server, worker, last_job)
    server.call("POST", "/sdapi/v1/interrupt")
    at_interrupt = progress_state(server)
    worker.join()
    stopped, total = progress_state(server)["sampling_step"], at_interrupt["sampling_steps"]
    calls = f"call {before['sampling_step']} when interrupting, {at_interrupt['sampling_step']} when the " \
            f"interrupt had answered, stopped at {stopped} of {total}"
    report.check("interrupt: the request still answers", answer.get("status") == 200, answer.get("image")
                 if answer.get("status") != 200 else "")
    report.check("interrupt: FlowSR made no network call after the one under way",
                 0 < at_interrupt["sampling_step"] <= stopped <= at_interrupt["sampling_step"] + 1 < total
                 and "FlowSR: interrupted" in server.log_text(), calls)
    if answer.get("status") == 200:
        (report.out / "interrupted_x4.png").write_bytes(answer["image"])
        report.check("interrupt: A1111's resize to the target size", png_size(answer["image"]) == (512, 512),
                     png_size(answer["image"]))
    server.call("POST", "/sdapi/v1/options", {"flowsr_tile_size": -1})  # automatic again
    status, reply, seconds = server.upscale(test_picture(32, 32), 2, upscaler)
    report.check("after the interrupt the next request works", status == 200 and png_size(reply) == (64, 64),
                 f"{seconds:.1f} s" if status == 200 else reply)


def check_batch(report: Report, server: Server, upscaler: str) -> None:
    """The other postprocessing path: Extras' batch (POST /sdapi/v1/extra-batch-images), two images at x2."""
    status, reply = server.upscale_batch([test_picture(40, 32), test_picture(24, 24)], 2, upscaler)
    sizes = [png_size(image) for image in reply] if status == 200 else reply
    report.check("extra-batch-images x2: each image at the host's target size", sizes == [(80, 64), (48, 48)], sizes)


def check_settings_refused(report: Report, server: Server) -> None:
    """Values no FlowSR setting can hold are refused through the real API: the old value stays, GET still
    answers, and the log has one line per refused value and no traceback."""
    _, before = server.call("GET", "/sdapi/v1/options")
    log_start = len(server.log_text())
    status, _ = server.call("POST", "/sdapi/v1/options", BAD_SETTINGS)
    report.check("settings: POST of bad values answers", status == 200, status)
    status, after = server.call("GET", "/sdapi/v1/options")
    kept = status == 200 and all(after[key] == before[key] for key in BAD_SETTINGS)
    report.check("settings: GET /sdapi/v1/options still answers, each bad value refused and the old one kept",
                 kept, {key: after[key] for key in BAD_SETTINGS} if status == 200 else after)
    log = server.log_text()[log_start:]
    lines = [line for line in log.splitlines() if line.startswith("FlowSR:") and "must be" in line]
    named = all(any(f"{key}" in line and repr(value)[:8] in line for line in lines) for key, value in BAD_SETTINGS.items())
    report.check("settings: one log line per refused value (setting, value, range), no traceback",
                 len(lines) == len(BAD_SETTINGS) and named and "Traceback" not in log, lines or log[-2000:])


def check_bad_saved_settings(report: Report, server: Server) -> None:
    """BAD_SETTINGS were written into config.json before the start: reset to the defaults, with a warning."""
    status, options = server.call("GET", "/sdapi/v1/options")
    report.check("settings saved bad in config.json: GET /sdapi/v1/options answers", status == 200, status)
    log = server.log_text()
    warned = [line for line in log.splitlines() if "using the default" in line and line.startswith("FlowSR:")]
    reset = status == 200 and {key: options[key] for key in DEFAULT_SETTINGS} == DEFAULT_SETTINGS
    report.check("settings saved bad in config.json: each reset to its default at start with a warning",
                 reset and len(warned) == len(BAD_SETTINGS), warned)


def spoil_saved_settings(a1111: Path) -> None:
    """Write BAD_SETTINGS into the web UI's config.json, as a client of an older FlowSR could have stored them."""
    config = a1111 / "config.json"
    saved = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps({**saved, **BAD_SETTINGS}, indent=4))


def watch_progress(server: Server, worker: threading.Thread, last_job: str, readings: list) -> None:
    """Record /sdapi/v1/progress (progress, call, calls) of the job after ``last_job`` every 0.1 s while
    ``worker`` runs."""
    while worker.is_alive():
        reply = server.call("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=30)[1]
        state = reply["state"]
        if state["job_timestamp"] != last_job:
            readings.append((reply["progress"], state["sampling_step"], state["sampling_steps"]))
        time.sleep(0.1)


def wait_for_stop(server: Server, worker: threading.Thread, log_start: int) -> tuple[float, bool]:
    """When FlowSR stopped (polled every 20 ms), and whether by the interrupt: its "interrupted" line in the
    log after offset ``log_start``, else the request's end (an interrupt during the last call has no effect)."""
    while worker.is_alive():
        if "FlowSR: interrupted" in server.log_text()[log_start:]:
            return time.time(), True
        time.sleep(0.02)
    return time.time(), "FlowSR: interrupted" in server.log_text()[log_start:]


def check_cancel_delay(report: Report, server: Server, upscaler: str) -> None:
    """Issue 24: interrupt the issue's long upscale during its last network call and time how long FlowSR
    takes to stop (its "interrupted" line in the log) and the request to answer; the progress the host shows
    must never reach 1.0 while calls remain."""
    server.call("POST", "/sdapi/v1/options", {"flowsr_tile_size": -1})
    image = test_picture(*LONG_UPSCALE_SIZE)
    answer: dict = {}
    readings: list = []

    def request() -> None:
        answer["status"], answer["image"], answer["seconds"] = server.upscale(image, 4, upscaler)

    last_job = progress_state(server)["job_timestamp"]
    time.sleep(1.1)  # job timestamps have whole seconds
    worker = threading.Thread(target=request)
    watcher = threading.Thread(target=watch_progress, args=(server, worker, last_job, readings))
    log_start = len(server.log_text())
    worker.start()
    watcher.start()
    while worker.is_alive() and not (readings and readings[-1][2] and readings[-1][1] >= max(1, readings[-1][2] - 1)):
        time.sleep(0.05)  # until the last network call is under way
    server.call("POST", "/sdapi/v1/interrupt")
    interrupted_at = time.time()
    calls_at_interrupt = f"{readings[-1][1] + 1} of {readings[-1][2]}" if readings else "(none seen)"
    stopped_at, by_interrupt = wait_for_stop(server, worker, log_start)
    worker.join()
    watcher.join()
    delay, answered = stopped_at - interrupted_at, time.time() - interrupted_at
    how = "stopped by the interrupt" if by_interrupt else "ran to the end"
    report.facts["cancel delay"] = (f"{LONG_UPSCALE_SIZE[0]}x{LONG_UPSCALE_SIZE[1]} x4, automatic tile, interrupted "
                                    f"during call {calls_at_interrupt}: FlowSR {how} {delay:.2f} s after the "
                                    f"interrupt answered, the request answered {answered:.2f} s after")
    report.check(f"cancel: FlowSR stops within {CANCEL_DELAY_LIMIT_S} s of POST /sdapi/v1/interrupt",
                 by_interrupt and delay <= CANCEL_DELAY_LIMIT_S, report.facts["cancel delay"])
    # /sdapi/v1/progress adds 0.01 to what is done (its "avoid dividing zero") and clamps at 1, so it shows 1.0
    # once 99 % of any job is done (104 of 105 calls); the web UI's own progress has no such offset. Readings
    # before FlowSR's first call are left out: until the host calls FlowSR they show the host's own count (Extras
    # counts its image done as it starts it, with the last job's steps; reForge first hashes every pixel of the
    # image, seconds at this size). FlowSR counts the image unfinished for its whole run, so a fault of its own
    # shows at every call.
    early = [r for r in readings if r[1] >= 1 and r[0] >= 1.0 and r[1] < API_OFFSET_DONE * r[2]]
    report.check("cancel: /sdapi/v1/progress, from FlowSR's first call, says 1.0 only once 99 % of the calls are done",
                 readings and not early,
                 f"{len(readings)} readings; at 1.0 early: {[(round(p, 3), f'{c}/{n}') for p, c, n in early][:5]}")


#: A frame of FlowSR's console bar that ends a line: the bar's last, drawn when it closes.
CLOSING_FRAME = re.compile(r"FlowSR: +\d+%\|[^|\r\n]*\| *\d+/\d+ \[[^\]\r\n]*\]\n")


def check_console(report: Report, server: Server) -> None:
    """One progress line per FlowSR upscale in the console: no frame before the total is known, 100% once."""
    log = server.log_text()
    closing = CLOSING_FRAME.findall(log)
    untotalled = re.findall(r"FlowSR: \d+call", log)
    complete = server.flowsr_upscales - log.count("FlowSR: interrupted")
    report.check("console: one progress line per upscale, without a frame that lacks the total, at 100% once",
                 len(closing) == server.flowsr_upscales and not untotalled
                 and log.count("FlowSR: 100%") == complete,
                 f"{server.flowsr_upscales} upscales ({complete} to the end), {len(closing)} closed bars, "
                 f"{log.count('FlowSR: 100%')} frames at 100%, {len(untotalled)} without a total")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a1111", type=Path, required=True, help="the stable-diffusion-webui folder")
    parser.add_argument("--python", default=sys.executable, help="the web UI's Python (its venv)")
    parser.add_argument("--out", type=Path, default=Path("a1111-report"))
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--host", choices=sorted(HOST_FLAGS), default="a1111", help="which web UI of the family")
    parser.add_argument("--upscaler", default=BUILTIN_ENTRY, help="the FlowSR entry to upscale with")
    parser.add_argument("--checkpoint", help="the weights file of --upscaler, for the CLI comparison "
                                             "(none for the built-in model)")
    parser.add_argument("--a1111-version", help="what to report as the web UI's version (tag and commit)")
    parser.add_argument("--startup-timeout", type=float, default=900)
    args = parser.parse_args(argv)
    a1111 = args.a1111.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report(args.out)
    versions = subprocess.run([args.python, "-c", "import torch, sys; print(sys.version.split()[0], torch.__version__)"],
                              capture_output=True, text=True).stdout.strip()
    report.facts.update({"a1111": str(a1111), "python, torch": versions})
    described = subprocess.run(["git", "-C", str(a1111), "describe", "--tags", "--always"], capture_output=True,
                               text=True).stdout.strip()
    report.facts["a1111 version"] = args.a1111_version or described or "(not a git checkout; pass --a1111-version)"

    extension = link_extension(a1111)
    report.facts["extension"] = f"{extension} -> {extension.resolve()}"
    first = run_installer(a1111, args.python, extension)
    report.check("install.py runs as at A1111's start", first.returncode == 0, (first.stdout + first.stderr)[-2000:])
    libraries = ("diffusers", "peft", "transformers", "accelerate", "safetensors")
    code = f"import {', '.join(libraries)}; print({', '.join(f'{name}.__version__' for name in libraries)})"
    versions = subprocess.run([args.python, "-c", code], capture_output=True, text=True).stdout.strip()
    report.facts[" ".join(libraries)] = versions
    second = run_installer(a1111, args.python, extension)
    report.check("install.py again: nothing to do, nothing printed", second.returncode == 0 and not second.stdout,
                 second.stdout[-2000:])

    spoil_saved_settings(a1111)
    server = Server(a1111, args.python, args.port, args.out / "a1111.log", args.host)
    try:
        server.wait_ready(args.startup_timeout)
        log = server.log_text()
        errors = [line for line in log.splitlines() if "Error loading script: flowsr_upscaler.py" in line
                  or ("Error running preload()" in line and str(extension) in line)]
        report.check("extension loaded without errors", not errors, errors)
        _, upscalers = server.call("GET", "/sdapi/v1/upscalers")
        names = [u["name"] for u in upscalers]
        report.facts["FlowSR upscalers"] = [n for n in names if "FlowSR" in n]
        report.check("GET /sdapi/v1/upscalers lists FlowSR",
                     {"FlowSR 4x", "FlowSR 2x", BUILTIN_ENTRY, args.upscaler} <= set(names), names)
        check_bad_saved_settings(report, server)
        _, options = server.call("GET", "/sdapi/v1/options")
        flowsr_options = {k: v for k, v in options.items() if k.startswith("flowsr_")}
        report.check("settings exist in API-only mode", len(flowsr_options) >= 5, flowsr_options)

        weights_folder = a1111 / "models" / "FlowSR"
        if not (weights_folder / "flowsr.safetensors").exists():
            status, reply, _ = server.upscale(test_picture(16, 16), 4, "FlowSR 4x")
            report.check("missing weights: an error naming models/FlowSR",
                         status != 200 and str(weights_folder) in json.dumps(reply), reply)
        check_scales(report, server, args.python, args.upscaler, args.checkpoint)
        check_batch(report, server, args.upscaler)
        check_settings_refused(report, server)
        check_interrupt(report, server, args.upscaler)
        check_cancel_delay(report, server, args.upscaler)
        check_console(report, server)
    except Exception as error:  # a broken run is a failed check, with the log kept
        report.check("driver ran to the end", False, repr(error))
    finally:
        server.stop()
    return report.write()


if __name__ == "__main__":
    sys.exit(main())
