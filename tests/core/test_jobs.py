"""Folder jobs: atomic outputs, resume, a deterministic split across processes, batches, and a job of two
processes that survives one of them being killed."""
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from flowsr import jobs
from flowsr.cli import main
from flowsr.image_rules import PLAIN_PIL_MODES
from flowsr.imagefiles import TEMPORARY_SUFFIX, save_picture

REPO = Path(__file__).resolve().parents[2]


def write_images(folder: Path, sizes) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate(sizes):
        path = folder / f"img{index:02d}.png"
        Image.fromarray(generator.integers(0, 255, (height, width, 3), np.uint8)).save(path)
        paths.append(path)
    return paths


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_the_split_is_disjoint_complete_and_the_same_every_time(tmp_path):
    tasks = [jobs.Task(tmp_path / f"{i}.png", tmp_path / "out" / f"{i}.png") for i in range(11)]
    shards = [jobs.Shard(rank, 3).take(tasks) for rank in range(3)]
    assert sorted(t.source.name for shard in shards for t in shard) == sorted(t.source.name for t in tasks)
    assert shards == [jobs.Shard(rank, 3).take(tasks) for rank in range(3)]
    assert jobs.Shard().take(tasks) == tasks


def test_shard_reads_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert jobs.Shard.from_environment() == jobs.Shard(3, 4, 1)


def test_batches_group_equal_sizes_in_input_order(tmp_path):
    paths = write_images(tmp_path / "in", [(8, 8), (12, 8), (8, 8), (8, 8), (12, 8)])
    tasks = [jobs.Task(path, tmp_path / path.name) for path in paths]
    batches = jobs.sized_batches(tasks, 2.0, 2, jobs.Report())
    assert [[t.source.name for t in batch] for batch in batches] == [
        ["img00.png", "img02.png"], ["img03.png"], ["img01.png", "img04.png"]]


def test_only_plain_modes_share_batches(tmp_path):
    tasks = []
    for index, mode in enumerate(["P", "P", "LA", "LA", "CMYK", "CMYK"]):
        path = tmp_path / f"{index}.{'tif' if mode == 'CMYK' else 'png'}"
        Image.new("RGB", (8, 8), (200, 30, 40)).convert(mode).save(path)
        tasks.append(jobs.Task(path, tmp_path / "out" / path.name))
    batches = jobs.sized_batches(tasks, 2.0, 4, jobs.Report())
    assert sorted(len(batch) for batch in batches) == [1, 1, 1, 1, 2]


@pytest.mark.parametrize("mode", sorted(PLAIN_PIL_MODES))
def test_plain_modes_stacked_equal_one_at_a_time(tiny_pipeline, mode):
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 255, (8, 8, 4), np.uint8)).convert(mode) for _ in range(2)]
    stacked = jobs.upscale_images(tiny_pipeline, images, dict(scale=2), SimpleNamespace(network_calls=None))
    for image, result in zip(images, stacked):
        alone = tiny_pipeline.upscale(image, scale=2)
        assert result.mode == alone.mode == mode
        np.testing.assert_array_equal(np.asarray(result), np.asarray(alone))


def test_a_job_is_planned_without_importing_torch():
    """The command line answers bad input fast: jobs and the image rules it reads must stay torch-free."""
    probe = "import sys, flowsr.jobs, flowsr.image_rules; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_package_lists_its_lazy_pipeline_without_importing_torch():
    """``dir(flowsr)`` (tab completion) shows ``FlowSRPipeline``, which is imported on first use only."""
    probe = "import sys, flowsr; print('FlowSRPipeline' in dir(flowsr), 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True False"


def test_batched_outputs_equal_one_at_a_time(tiny_checkpoint, tmp_path):
    write_images(tmp_path / "in", [(16, 12)] * 3 + [(10, 10)])
    common = ["--checkpoint", str(tiny_checkpoint), "--scale", "2"]
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "one"), "--batch-size", "1", *common]) == 0
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "three"), "--batch-size", "3", *common]) == 0
    for path in sorted((tmp_path / "one").iterdir()):
        np.testing.assert_array_equal(pixels(path), pixels(tmp_path / "three" / path.name))


def test_resume_skips_finished_outputs_and_plain_runs_replace_them(tiny_checkpoint, tmp_path, capsys):
    write_images(tmp_path / "in", [(8, 8)] * 3)
    out = tmp_path / "out"
    command = ["upscale", str(tmp_path / "in"), "-o", str(out), "--checkpoint", str(tiny_checkpoint)]
    assert main(command) == 0
    marker = Image.new("RGB", (5, 5))
    marker.save(out / "img01.png")
    assert main([*command, "--resume"]) == 0
    assert "2 written" not in capsys.readouterr().out and Image.open(out / "img01.png").size == (5, 5)
    assert main(command) == 0
    assert "3 written" in capsys.readouterr().out and Image.open(out / "img01.png").size == (32, 32)


def test_without_a_launcher_each_process_prints_its_own_share(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """RANK and WORLD_SIZE alone (a SLURM array): no process group to gather reports, so each one reports."""
    write_images(tmp_path / "in", [(8, 8)] * 3)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(tiny_checkpoint)]) == 0
    assert "1 written" in capsys.readouterr().out
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["img01.png"]


def test_resume_is_refused_for_outputs_that_replace_their_input(tiny_checkpoint, tmp_path, capsys):
    """In place, an existing output says nothing of whether it was upscaled: a resume would upscale twice."""
    in_place = write_images(tmp_path / "photos", [(8, 8)])[0]
    command = ["upscale", str(in_place), "-o", str(tmp_path / "photos"), "--overwrite-inputs", "--scale", "2",
               "--checkpoint", str(tiny_checkpoint)]
    assert main([*command, "--resume"]) == 2
    assert "--resume cannot tell" in capsys.readouterr().err and Image.open(in_place).size == (8, 8)
    assert main(command) == 0 and Image.open(in_place).size == (16, 16)


def test_resume_removes_what_a_killed_writer_left_of_its_outputs(tiny_checkpoint, tmp_path):
    write_images(tmp_path / "in", [(8, 8)] * 2)
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / f".img00.png.k1ll3d{TEMPORARY_SUFFIX}"
    unrelated = out / f".other.png.x{TEMPORARY_SUFFIX}"
    leftover.write_bytes(b"half a PNG")
    unrelated.write_bytes(b"not ours")
    command = ["upscale", str(tmp_path / "in"), "-o", str(out), "--checkpoint", str(tiny_checkpoint)]
    assert main(command) == 0 and leftover.exists()  # a plain run may have a live writer beside it
    assert main([*command, "--resume"]) == 0
    assert not leftover.exists() and unrelated.exists()


def test_an_interrupted_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    Image.new("RGB", (4, 4), "red").save(path)
    before = path.read_bytes()

    def interrupt(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_picture(Image.new("RGB", (64, 64), "blue"), path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_what_any_new_file_gets_and_the_umask_is_left_alone(tmp_path, monkeypatch, umask):
    def no_umask(mask):
        raise AssertionError("os.umask sets the mask of the whole process (every thread) to read it")

    previous = os.umask(umask)
    try:
        monkeypatch.setattr(os, "umask", no_umask)
        save_picture(Image.new("RGB", (4, 4)), tmp_path / "out.png")
        (tmp_path / "plain").touch()
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o666 & ~umask


def _save_repeatedly(image, path, times=20):
    for _ in range(times):
        save_picture(image, path)


def test_concurrent_writers_of_one_path_leave_one_whole_file(tmp_path):
    path = tmp_path / "out.png"
    images = [Image.fromarray(np.full((256, 256, 3), value, np.uint8)) for value in (10, 200)]
    threads = [threading.Thread(target=_save_repeatedly, args=(image, path)) for image in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert np.unique(pixels(path)).tolist() in ([10], [200])
    assert list(tmp_path.iterdir()) == [path]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(rank: int, world: int, port: int, arguments: list[str]) -> subprocess.Popen:
    """One process of a job, with the variables torchrun sets."""
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "flowsr", *arguments], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 300.0) -> tuple[str, str]:
    """The process's (stdout, stderr); on a timeout, its threads' stacks (faulthandler) in the failure."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        pytest.fail(f"a job process hung:\n{process.communicate()[1][-5000:]}")


def _wait_for(condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_two_processes_killed_and_resumed_match_one_process(tmp_path):
    """Rank 1 takes the odd-numbered (larger) images; it is killed after its first output, then the job is
    started again with --resume: every output is whole and equal to a one-process run's."""
    sizes = [(24, 24), (96, 96)] * 5
    write_images(tmp_path / "in", sizes)
    arguments = ["upscale", str(tmp_path / "in"), "--scale", "2", "--batch-size", "1", "--device", "cpu"]
    single = subprocess.run([sys.executable, "-m", "flowsr", *arguments, "-o", str(tmp_path / "single")],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr

    out = tmp_path / "out"
    port = _free_port()
    processes = [_launch(rank, 2, port, [*arguments, "-o", str(out)]) for rank in range(2)]
    rank1_outputs = [out / f"img{index:02d}.png" for index in range(1, 10, 2)]
    _wait_for(lambda: any(path.exists() for path in rank1_outputs) or processes[1].poll() is not None)
    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait()
    first_run_rank0 = _finish(processes[0])
    assert processes[0].returncode != 0, "rank 0 must not report success for a job with a dead process"
    done_before = [path for path in rank1_outputs if path.exists()]
    assert 1 <= len(done_before) < len(rank1_outputs), first_run_rank0
    stamps = {path: path.stat().st_mtime_ns for path in done_before}

    port = _free_port()
    processes = [_launch(rank, 2, port, [*arguments, "-o", str(out), "--resume"])
                 for rank in range(2)]
    results = [_finish(process) for process in processes]
    stderr_tails = "\n".join(f"rank {rank}: {stderr[-4000:]}" for rank, (_, stderr) in enumerate(results))
    assert [process.returncode for process in processes] == [0, 0], stderr_tails  # a crash's stack is at the end
    assert "skipped as already done" in results[0][0]
    assert all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())  # not redone
    finished = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert finished == sorted(p.name for p in (tmp_path / "single").iterdir())
    for name in finished:
        np.testing.assert_array_equal(pixels(out / name), pixels(tmp_path / "single" / name))


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_a_folder_job_exits_128_plus_it_and_leaves_only_whole_files(
        tiny_checkpoint, tmp_path, monkeypatch, capsys, terminal_signals, signum, code, word):
    """A real Ctrl-C or SIGTERM to this process mid-job: 128 + the signal, as shells and launchers expect, one
    line saying how to continue, and nothing half-written."""
    write_images(tmp_path / "in", [(8, 8)] * 3)
    real_fsync, calls = os.fsync, []
    handler_before = signal.getsignal(signum)

    def signal_at_the_second(descriptor):
        calls.append(descriptor)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", signal_at_the_second)
    out = tmp_path / "out"
    exit_code = main(["upscale", str(tmp_path / "in"), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                      "--batch-size", "1"])
    error = capsys.readouterr().err
    assert exit_code == code and word in error and "--resume" in error and "Traceback" not in error
    assert not [p for p in out.iterdir() if p.name.endswith(TEMPORARY_SUFFIX)]
    for path in out.iterdir():
        assert pixels(path).shape == (32, 32, 3)
    assert signal.getsignal(signum) is handler_before  # main() put the previous handler back
