"""Upscaling many files as one job: on one process, or split across the processes of ``torchrun`` /
``accelerate launch`` (one device each), resumable.

The job is planned the same way on every process: the inputs in sorted order, one output each, and
process ``rank`` takes every ``world``-th of them, so the split is deterministic and no two processes write
the same file. Outputs are written whole or not at all (:mod:`flowsr.imagefiles`), so with ``resume`` an
existing output means done. Images of one size are upscaled in shared batches while background threads
decode the next batch and encode the last. The main process shows one bar for the whole job; every
process's report is gathered there for the summary.

The process layout is read from the variables torchrun and accelerate set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR); the reports travel over ``torch.distributed`` (gloo), which PyTorch itself provides, so the
core needs no launcher library.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import groupby
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .errors import BadInputError, FlowSRError
from .image_rules import PLAIN_PIL_MODES, checked_output_size
from .imagefiles import IMAGE_SUFFIXES, Picture, read_header, read_picture, remove_leftovers, save_picture

READ_AHEAD = 2      # batches decoded ahead of the network
WRITE_BEHIND = 2    # batches of outputs that may wait for encoding before the network waits for them
IO_THREADS = 2
#: How long a process waits for the others' reports at the end; the slowest shard sets the pace.
GATHER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Task:
    source: Path
    destination: Path


@dataclass
class Report:
    """What one process (or, merged, the whole job) did."""
    written: int = 0
    already_done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, task: Task, reason: str) -> None:
        self.failures.append((str(task.source), reason))
        tqdm.write(f"flowsr: skipped {task.source}: {reason}", file=sys.stderr)

    @classmethod
    def merged(cls, reports: Sequence["Report"]) -> "Report":
        return cls(sum(r.written for r in reports), sum(r.already_done for r in reports),
                   sorted(failure for r in reports for failure in r.failures), max(r.seconds for r in reports))

    def summary(self, output: Path) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        lines = [f"flowsr: {self.written} written to {output} in {self.seconds:.1f} s ({rate:.2f} images/s), "
                 f"{self.already_done} skipped as already done, {len(self.failures)} failed"]
        lines += [f"  failed: {source}: {reason}" for source, reason in self.failures]
        return "\n".join(lines)


# --- planning: what goes where, checked before any work starts ---------------------------------------------

def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly, and those found directly inside named folders, in sorted order."""
    images: list[Path] = []
    for path in inputs:
        if path.is_dir():
            images += sorted(p for p in _folder_entries(path) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            images.append(path)
        else:
            raise BadInputError(f"{path} does not exist")
    if not images:
        raise BadInputError(f"no images found in {', '.join(map(str, inputs))} (looked for {sorted(IMAGE_SUFFIXES)})")
    return images


def _folder_entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as error:  # no permission to list it
        raise BadInputError(f"cannot read the folder {folder}: {error.strerror or error}") from None


def plan_tasks(images: Sequence[Path], output: Path) -> list[Task]:
    """One input and an output with an image suffix: that file. Otherwise: ``output/<name>.png``."""
    if len(images) == 1 and output.suffix.lower() in IMAGE_SUFFIXES:
        return [Task(images[0], output)]
    if output.suffix.lower() in IMAGE_SUFFIXES:
        raise BadInputError(f"{len(images)} images cannot all be written to the file {output}; give a folder")
    names = [image.stem for image in images]
    collisions = _collisions(images, names)
    if collisions:
        shown = "; ".join(" and ".join(str(path) for path in paths) for paths in collisions[:3])
        more = f" (and {len(collisions) - 3} more)" if len(collisions) > 3 else ""
        raise BadInputError(f"{len(collisions)} output name(s) in {output} would be written by more than one "
                            f"input: {shown}{more}; upscale them into different folders, or rename them")
    return [Task(image, output / f"{name}.png") for image, name in zip(images, names)]


def _collisions(images: Sequence[Path], names: Sequence[str]) -> list[list[Path]]:
    """The inputs that would share an output name, grouped by that name, in input order."""
    groups: dict[str, list[Path]] = {}
    for image, name in zip(images, names):
        groups.setdefault(name, []).append(image)
    return [paths for paths in groups.values() if len(paths) > 1]


def check_destinations(tasks: Sequence[Task], overwrite_inputs: bool, resume: bool = False) -> None:
    """Refuse, before any work, outputs that would replace an input or that cannot be files."""
    inputs = {os.path.realpath(task.source) for task in tasks}
    for task in tasks:
        if task.destination.is_dir():
            raise BadInputError(f"the output {task.destination} is a folder; name a file, or a folder for many images")
        if os.path.realpath(task.destination) not in inputs:
            continue
        if not overwrite_inputs:
            raise BadInputError(f"the output {task.destination} is an input; choose another output, or pass "
                                "--overwrite-inputs to replace the input with its upscaled version")
        if resume:  # in place, nothing tells an upscaled file from one not yet done: a resume would upscale twice
            raise BadInputError(f"the output {task.destination} is an input, so --resume cannot tell whether it "
                                "was already upscaled; write the outputs to another folder, or leave out --resume")


def prepare_folders(tasks: Sequence[Task]) -> None:
    """Create the output folders and make sure files can be written there, before the model loads."""
    for folder in sorted({task.destination.parent for task in tasks}):
        if folder.exists() and not folder.is_dir():
            raise BadInputError(f"the output folder {folder} is a file; name a folder (or a file with an image "
                                f"suffix, for one image)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f".flowsr-write-test-{os.getpid()}", "wb"):
                pass
            (folder / f".flowsr-write-test-{os.getpid()}").unlink()
        except OSError as error:
            raise BadInputError(f"cannot write to the output folder {folder} ({error.strerror or error}); "
                                "choose a folder you can write to") from None


def check_output_name(inputs: Sequence[Path], output: Path) -> None:
    """One image file in and ``-o out.jgp`` out is a mistyped file name, not a folder to create."""
    one_file_in = len(inputs) == 1 and inputs[0].is_file()
    suffix = output.suffix.lower()
    if one_file_in and suffix and suffix not in IMAGE_SUFFIXES and not output.is_dir():
        raise BadInputError(f"the output {output} has the suffix {output.suffix!r}, which is not an image type; "
                            f"name a file ending in one of {sorted(IMAGE_SUFFIXES)}, or an existing folder")


def plan(inputs: Sequence[Path], output: Path, overwrite_inputs: bool = False, resume: bool = False) -> list[Task]:
    """Every task of the job, checked, with its output folder ready."""
    check_output_name(inputs, output)
    tasks = plan_tasks(collect_images(inputs), output)
    check_destinations(tasks, overwrite_inputs, resume)
    prepare_folders(tasks)
    return tasks


# --- processes ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """This process's place among the job's processes."""
    rank: int = 0
    count: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "Shard":
        """From the variables torchrun and accelerate set; one process when they are absent."""
        environ = os.environ
        return cls(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        """Started by torchrun or accelerate launch (which set MASTER_ADDR), not split by RANK and WORLD_SIZE alone:
        then process 0 speaks for the whole job."""
        return self.count > 1 and "MASTER_ADDR" in os.environ

    @property
    def speaks_for_itself(self) -> bool:
        """Whether this process prints its own summary and interruption: each alone, only process 0 of a launch."""
        return self.is_main or not self.launched

    def take(self, tasks: Sequence[Task]) -> list[Task]:
        """Every ``count``-th task, from this process's rank: the same split on every run."""
        return list(tasks[self.rank::self.count])

    def device(self, requested: str) -> str:
        """With several processes, ``auto``/``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``)."""
        import torch

        if self.count > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def connect(self) -> bool:
        """Join the launcher's process group (gloo) to gather reports at the end; False when there is none."""
        import torch.distributed as dist

        if not self.launched or not dist.is_available():
            return False
        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.count, timeout=GATHER_TIMEOUT)
        return True


def gather_reports(report: Report, connected: bool) -> list[Report]:
    """Every process's report (all of them when ``connected``), or this one's alone."""
    if not connected:
        return [report]
    import torch.distributed as dist

    reports: list[Optional[Report]] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(reports, report)
    except RuntimeError as error:  # a process of the job died or stopped
        raise FlowSRError(f"another process of this job stopped before the end ({str(error).splitlines()[0]}); "
                          "this process's outputs are complete: start the job again with --resume") from None
    dist.destroy_process_group()
    return reports


def split_done(tasks: Sequence[Task], resume: bool) -> tuple[list[Task], list[Task]]:
    """(to do, already done): with ``resume`` an existing output is done; without it, it is redone."""
    todo: list[Task] = []
    done: list[Task] = []
    for task in tasks:
        (done if resume and task.destination.exists() else todo).append(task)
    return todo, done


# --- progress -----------------------------------------------------------------------------------------------

class JobProgress:
    """One bar for the whole job, shown by the main process only.

    With one process it counts this process's images as they are written or fail, so a job with failures
    still ends at 100 %; with several, a watcher thread counts the outputs of the whole job that appeared since
    it started (they are written atomically, so they are whole), and failures show in the summary only.
    """

    def __init__(self, tasks: Sequence[Task], already_done: int, shard: Shard, since_ns: int):
        """``since_ns``: when ``already_done`` was counted; outputs written after it are this job's."""
        self.bar = tqdm(total=len(tasks), initial=already_done, unit="image", disable=not shard.is_main,
                        dynamic_ncols=True, smoothing=0.1)
        self._stop = threading.Event()
        self._watcher = None
        if shard.count > 1 and shard.is_main:
            self._waiting, self._since_ns = list(tasks), since_ns
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()

    def advance(self, images: int = 1) -> None:
        """``images`` more of this process's images are done with: written, or failed."""
        if self._watcher is None:
            self.bar.update(images)

    def network_calls(self, done: int, total: int) -> None:
        self.bar.set_postfix_str(f"network calls {done}/{total}", refresh=False)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._count_new_outputs()

    def _count_new_outputs(self) -> None:
        still = [task for task in self._waiting if not _written_since(task.destination, self._since_ns)]
        self.bar.update(len(self._waiting) - len(still))
        self._waiting = still

    def close(self) -> None:
        if self._watcher is not None:
            self._stop.set()
            self._watcher.join()
            self._count_new_outputs()
        self.bar.close()


def _written_since(path: Path, since_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= since_ns
    except OSError:
        return False


# --- the work -----------------------------------------------------------------------------------------------

def sized_batches(tasks: Sequence[Task], scale: float, batch_size: int, report: Report) -> list[list[Task]]:
    """Tasks grouped by image size and mode (read from the headers), in batches of up to ``batch_size``.

    Images whose output would exceed the pipeline's limit are refused here, before they are decoded.
    """
    keyed = []
    for task in tasks:
        try:
            keyed.append((_batch_key(task.source, scale), task))
        except BadInputError as error:
            report.fail(task, str(error))
    keyed.sort(key=lambda pair: pair[0])  # stable: inputs stay in order within a size
    batches = []
    for key, group in groupby(keyed, key=lambda pair: pair[0]):
        members = [task for _, task in group]
        size = batch_size if key[-1] in PLAIN_PIL_MODES else 1
        batches += [members[start:start + size] for start in range(0, len(members), size)]
    return batches


def _batch_key(path: Path, scale: float) -> tuple[int, int, str]:
    width, height, mode = read_header(path)
    checked_output_size(height, width, scale)
    return width, height, mode


def load_batch(tasks: Sequence[Task]) -> list[Picture | BadInputError]:
    """Decoded pictures, or the error that stopped each one (run on a reader thread)."""
    loaded: list[Picture | BadInputError] = []
    for task in tasks:
        try:
            loaded.append(read_picture(task.source))
        except BadInputError as error:
            loaded.append(error)
    return loaded


def upscale_images(pipe, images: Sequence[Image.Image], options: dict, progress: JobProgress) -> list[Image.Image]:
    """Upscale images of one size and mode: as one uint8 BHWC batch where they stack, else one by one."""
    if len(images) == 1:
        return [pipe.upscale(images[0], progress=progress.network_calls, **options)]
    stacked = np.stack([np.asarray(image) for image in images])
    if stacked.ndim == 3:
        stacked = stacked[..., None]  # grey: one channel
    upscaled = pipe.upscale(stacked, progress=progress.network_calls, **options)
    return [Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array) for array in upscaled]


class Job:
    """This process's share of a planned job, run with reads and writes overlapping the network."""

    def __init__(self, tasks: Sequence[Task], shard: Shard, options: dict, resume: bool = False,
                 batch_size: int = 4, connected: bool = False):
        """Reads every header of this process's share: images too large to decode fail here, before any work."""
        self.shard, self.options, self.connected = shard, options, connected
        self.all_tasks = list(tasks)
        self.counted_ns = time.time_ns()  # before the count: a faster process's output is not missed
        self.already_done_everywhere = len(split_done(tasks, resume)[1])
        mine = shard.take(tasks)
        if resume:  # the same command again after a crash: this process owns its outputs' leftovers
            for task in mine:
                remove_leftovers(task.destination)
        todo, done_here = split_done(mine, resume)
        self.report = Report(already_done=len(done_here))
        self.batches = sized_batches(todo, options["scale"], batch_size, self.report)

    def run(self, pipe) -> Report:
        """Upscale this process's share; returns the whole job's report (failures are recorded, not raised).

        ``pipe`` may be None when there are no batches (nothing left to do here).
        """
        start = time.perf_counter()
        self.progress = JobProgress(self.all_tasks, self.already_done_everywhere, self.shard, self.counted_ns)
        self.progress.advance(len(self.report.failures))  # refused from their headers while planning
        try:
            with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="flowsr-read") as readers, \
                    ThreadPoolExecutor(IO_THREADS, thread_name_prefix="flowsr-write") as writers:
                self._run_batches(pipe, self.options, self.batches, readers, writers)
            self.report.seconds = time.perf_counter() - start
            return Report.merged(gather_reports(self.report, self.connected))
        finally:
            self.progress.close()

    def _run_batches(self, pipe, options, batches, readers, writers) -> None:
        loading = deque(readers.submit(load_batch, batch) for batch in batches[:READ_AHEAD])
        writing: deque[list[tuple[Task, Future]]] = deque()
        for index, batch in enumerate(batches):
            loaded = loading.popleft().result()
            if index + READ_AHEAD < len(batches):
                loading.append(readers.submit(load_batch, batches[index + READ_AHEAD]))
            writing.append([(task, writers.submit(save_picture, image, task.destination, metadata))
                            for task, image, metadata in self._upscale_batch(pipe, options, batch, loaded)])
            while writing and (len(writing) > WRITE_BEHIND or all(future.done() for _, future in writing[0])):
                self._finish_writes(writing.popleft())  # the oldest batch: counted once written, waited for if late
        while writing:
            self._finish_writes(writing.popleft())

    def _upscale_batch(self, pipe, options, batch, loaded) -> list[tuple[Task, Image.Image, dict]]:
        """(task, upscaled image, metadata) for each picture of the batch that could be upscaled."""
        ready = []
        for task, picture in zip(batch, loaded):
            if isinstance(picture, BadInputError):
                self._fail(task, str(picture))
            else:
                ready.append((task, picture))
                if picture.frames > 1:
                    tqdm.write(f"flowsr: {task.source} has {picture.frames} frames; only the first is upscaled "
                               "(FlowSR upscales still images: split the frames to upscale them all)", file=sys.stderr)
        if not ready:
            return []
        try:
            images = upscale_images(pipe, [picture.image for _, picture in ready], options, self.progress)
        except (FlowSRError, MemoryError) as error:
            if len(ready) == 1:
                self._fail(ready[0][0], _reason(error))
                return []
            return [result for task, picture in ready  # the batch failed: try its images alone
                    for result in self._upscale_batch(pipe, options, [task], [picture])]
        return [(task, image, picture.metadata) for (task, picture), image in zip(ready, images)]

    def _finish_writes(self, writes: list[tuple[Task, Future]]) -> None:
        for task, future in writes:
            try:
                future.result()
            except (OSError, ValueError, FlowSRError) as error:
                self._fail(task, f"cannot write {task.destination} ({error})")
                continue
            self.report.written += 1
            self.progress.advance()

    def _fail(self, task: Task, reason: str) -> None:
        self.report.fail(task, reason)
        self.progress.advance()


def _reason(error: BaseException) -> str:
    if isinstance(error, MemoryError):
        return "out of memory; free memory, or use --batch-size 1, smaller tiles or a smaller scale"
    return str(error)
