"""`clean()`: a list of stages → datatrove passes → executors (local processes, Ray, Slurm) → sharded
output, `stats.json` and the per-stage table.

Document stages run back to back inside a pass. A corpus stage (dedup) ends its pass with a signature
step (after the pass has written its documents to a work shard), runs its find passes, and the next
pass starts by reading that shard back through the stage's filter, so document indices match.

Every pass runs `tasks` tasks — fixed by the input, not by the number of workers — each writing its
own shard: any worker count, any executor, gives the same bytes. Each executor records finished tasks
under `<output>/.work/logs`; a rerun with the same inputs and settings skips them (resume), and a run
whose output is complete does nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor

from ...atomic import check_apart, write_text
from ...bounded import read_json
from ...errors import LlamalabError
from ..corpus import cache_root
from . import presets, quality
from .decontaminate import build_index, save_index
from .hashing import simplify
from .language import identifier
from .read import InputReader, OutputWriter, ShardReader, Unit, plan_units, work_writer
from .report import collect, format_table
from .stage import CorpusStage, Measured, Pass, Timed

VERSION = 1
MAX_TASKS = 64
STATS = "stats.json"


@dataclass
class Options:
    preset: str = "commoncrawl"
    stages: str | None = None
    workers: int = 1
    tasks: int | None = None
    executor: str = "local"
    text_key: str = "text"
    compression: str | None = "gzip"
    languages: tuple[str, ...] | None = None
    language_threshold: float = 0.5
    near_threshold: float | None = None
    quality_model: str | None = None
    quality_threshold: float = 0.5
    decontaminate: str = "drop"
    decontaminate_tasks: list[str] | None = None
    benchmarks: str | None = None
    slurm: dict = field(default_factory=dict)
    keep_work: bool = False
    progress: bool = True


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor with task logs in files only. A task's error is not echoed to the console
    with its traceback (datatrove's `logger.exception`): it stays in the task's log file and is raised on,
    so the CLI says it in one line (a full disk) or shows it as the bug it is."""

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        console, sys.stderr = sys.stderr, io.StringIO()  # the console sink datatrove adds writes here
        try:
            return super()._run_for_rank(rank, local_rank + 1, node_rank)
        finally:
            sys.stderr = console


def clean(inputs: list[str], output: str, opts: Options) -> dict:
    """Run the stages over the inputs into `output`; returns the report (also written to stats.json)."""
    check_apart(output, inputs, "--output")
    units = plan_units(inputs)
    if not units:
        raise LlamalabError(f"no input files under {', '.join(inputs)}")
    names = presets.stage_names(opts.preset, opts.stages, opts.quality_model)
    out, work = Path(output), Path(output) / ".work"
    tasks = opts.tasks or min(len(units), MAX_TASKS)
    fingerprint = _fingerprint(units, names, tasks, opts)
    previous = _previous_run(out)
    if previous and previous.get("fingerprint") == fingerprint:
        print(f"{out}: already cleaned with these inputs and settings")
        return previous
    _reset_work(work, fingerprint)

    settings = _settings(work, opts, names)
    passes = compile_passes(units, [(n, presets.build(n, settings)) for n in names], str(work), tasks, opts)
    if opts.executor == "slurm":
        _submit_slurm(passes, opts, _logs(work, passes))
        print("submitted the passes to Slurm; when they have finished, rerun the same command to collect the "
              "output, stats.json and the table")
        return {"submitted": True}
    _run(passes, opts, _logs(work, passes))

    report = collect(passes, str(work), names)
    report.update(fingerprint=fingerprint, stage_names=names, preset=opts.preset, tasks=tasks,
                  shards=_publish(work / "final", out, previous))
    write_text(out / STATS, json.dumps(report, indent=1))
    if not opts.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(report))
    return report


def compile_passes(units: list[Unit], stages: list, work: str, tasks: int, opts: Options) -> list[Pass]:
    def reader():
        return InputReader(units, opts.text_key, bad_dir=f"{work}/bad")

    passes, steps, k = [], [reader()], 0
    for name, stage in stages:
        if not isinstance(stage, CorpusStage):
            steps.append(Measured(name, stage))
            continue
        folder = f"{work}/data/{k}"
        only_reader = len(steps) == 1  # nothing changed the input yet: the next pass reads it again
        if not only_reader:
            steps.append(work_writer(folder))
        passes.append(Pass(_pass_name(steps[1:]) + f"{name} signature", steps + [Timed(name, stage.signature)],
                           tasks))
        passes += [Pass(p.name, p.steps, p.tasks, stage=name) for p in stage.find]
        steps = [reader() if only_reader else ShardReader(folder), Measured(name, stage.filter, "duplicate")]
        k += 1
    steps.append(OutputWriter(f"{work}/final", opts.text_key, opts.compression))
    passes.append(Pass(_pass_name(steps[1:-1]) + "write", steps, tasks))
    return passes


def _pass_name(steps) -> str:
    names = [s.name for s in steps if isinstance(s, Measured)]
    return "".join(f"{n}, " for n in names)


def _settings(work: Path, opts: Options, names: list[str]) -> presets.Settings:
    s = presets.Settings(
        work=str(work), languages=tuple(opts.languages or presets.LANGUAGES.get(opts.preset, ("en",))),
        language_threshold=opts.language_threshold,
        near_threshold=opts.near_threshold or presets.NEAR_THRESHOLD.get(opts.preset, 0.8),
        quality_model=opts.quality_model, quality_threshold=opts.quality_threshold,
        decontaminate=opts.decontaminate)
    if opts.quality_model:
        quality.load(opts.quality_model)  # a bad model file is one clear error now, not a failure in every task
    if "decontaminate" in names:
        s.decontaminate_index = str(decontamination_index(opts.benchmarks, opts.decontaminate_tasks))
    _preload(names)
    return s


def _preload(names: list[str]):
    """Load what every task needs once, here: forked workers share it instead of each loading it."""
    simplify("")
    if "language" in names:
        identifier()


def decontamination_index(benchmarks: str | None, tasks: list[str] | None) -> Path:
    """The 13-gram index of the benchmark files, built once and cached by the files' sizes and times."""
    root = presets.benchmarks_dir(benchmarks)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    key = hashlib.sha256(json.dumps([VERSION, sorted(tasks or []), [
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]]).encode()).hexdigest()
    path = cache_root() / "decontaminate" / f"{key[:16]}.npz"
    if not path.exists():
        print(f"indexing benchmark 13-grams under {root} (once) ...", flush=True)
        save_index(path, build_index(root, tasks))
    return path


def _fingerprint(units, names, tasks, opts: Options) -> str:
    def stamp(u: Unit):
        st = os.stat(u.path)
        return [u.path, u.start, u.end, st.st_size, st.st_mtime_ns]

    keep = {k: v for k, v in asdict(opts).items() if k not in ("workers", "executor", "slurm", "keep_work",
                                                                "progress")}
    if opts.quality_model:
        keep["quality_model"] = [opts.quality_model, os.stat(opts.quality_model).st_mtime_ns]
    blob = json.dumps([VERSION, [stamp(u) for u in units], names, tasks, keep], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _previous_run(out: Path) -> dict | None:
    """The report of an earlier run into `out`; refuses a directory holding anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise LlamalabError(f"--output {out} exists and is not a directory")
    if (out / STATS).exists():
        try:
            return read_json(out / STATS)
        except ValueError:
            raise LlamalabError(f"{out / STATS} is unreadable; remove it or choose another --output") from None
    others = [p.name for p in out.iterdir() if p.name != ".work"]
    if others:
        raise LlamalabError(f"--output {out} already holds files ({', '.join(sorted(others)[:3])}, ...) that "
                            "`data clean` did not write; choose an empty or new directory")
    return None


def _reset_work(work: Path, fingerprint: str):
    stamp = work / "fingerprint"
    if work.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        shutil.rmtree(work)  # inputs or settings changed: nothing of the earlier attempt is reusable
    write_text(stamp, fingerprint)


def _publish(final: Path, out: Path, previous: dict | None) -> list[str]:
    """Move the finished shards into the output directory, replacing an earlier run's."""
    for name in (previous or {}).get("shards", []):
        (out / name).unlink(missing_ok=True)
    shards = sorted(p.name for p in final.iterdir()) if final.exists() else []
    for name in shards:
        os.replace(final / name, out / name)
    return shards


# ------------------------------------------------------------------------------------------ executors
def _logs(work: Path, passes: list[Pass]) -> list[str]:
    return [str(work / "logs" / f"{i:02d}") for i in range(len(passes))]


def _run(passes: list[Pass], opts: Options, logs: list[str]):
    started_ray = _start_ray() if opts.executor == "ray" else False
    try:
        with _Progress(passes, logs, opts.progress) as progress:
            for i, p in enumerate(passes):
                progress.at(i)
                start = time.perf_counter()
                _executor(opts, p, logs[i]).run()
                _check_complete(p, logs[i])
                if p.stage:  # a find pass: its wall time counts for its stage
                    write_text(Path(logs[i]) / "seconds", str(time.perf_counter() - start))
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _executor(opts: Options, p: Pass, logs: str):
    if opts.executor == "local":
        return QuietLocalExecutor(p.steps, tasks=p.tasks, workers=min(opts.workers, p.tasks), logging_dir=logs,
                                  start_method="fork")
    from datatrove.executor.ray import RayPipelineExecutor

    return RayPipelineExecutor(p.steps, tasks=p.tasks, workers=opts.workers, logging_dir=logs, cpus_per_task=1,
                               mem_per_cpu_gb=1)


def _check_complete(p: Pass, logs: str):
    done = len(list((Path(logs) / "completions").glob("*")))
    if done < p.tasks:
        raise LlamalabError(f"{p.tasks - done} of {p.tasks} tasks of pass '{p.name}' failed; see the task logs "
                            f"in {logs}/logs, then rerun the same command to resume")


def _start_ray() -> bool:
    try:
        import ray
    except ImportError:
        raise LlamalabError("--executor ray needs Ray: pip install 'llamalab[ray]'") from None
    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"LOGURU_LEVEL": "WARNING"}})
    return True


def _submit_slurm(passes: list[Pass], opts: Options, logs: list[str]):
    from datatrove.executor.slurm import SlurmPipelineExecutor

    if not opts.slurm.get("partition"):
        raise LlamalabError("--executor slurm needs --slurm-partition NAME")
    previous = None
    for p, log in zip(passes, logs):
        previous = SlurmPipelineExecutor(p.steps, tasks=p.tasks, time=opts.slurm.get("time", "24:00:00"),
                                         partition=opts.slurm["partition"], logging_dir=log, depends=previous,
                                         job_name=f"llamalab-clean-{Path(log).name}")
    previous.run()  # submits the whole chain, each pass depending on the one before


class _Progress:
    """A progress bar over the tasks of all passes, fed by the executors' completion files."""

    def __init__(self, passes: list[Pass], logs: list[str], enabled: bool):
        self.passes, self.logs, self.enabled = passes, logs, enabled
        self.current, self._stop = 0, threading.Event()

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=sum(p.tasks for p in self.passes), unit="task", desc="clean", disable=False)
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def at(self, i: int):
        self.current = i

    def _poll(self):
        while not self._stop.wait(0.5):
            self._update()

    def _update(self):
        done = sum(len(list((Path(d) / "completions").glob("*"))) if Path(d, "completions").exists() else 0
                   for d in self.logs)
        p = self.passes[self.current]
        self.bar.set_description(f"pass {self.current + 1}/{len(self.passes)} ({p.name})", refresh=False)
        self.bar.n = done
        self.bar.refresh()

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self.thread.join()
            self._update()
            self.bar.close()
