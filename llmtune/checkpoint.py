"""Atomic, verifiable checkpoints; picking the checkpoint to resume from; clean stops on signals.

``Trainer`` already stores what exact resumption needs (model weights as safetensors, optimizer,
scheduler, per-rank RNG states, ``trainer_state.json`` with the step; the data position follows
from the step, and ``Trainer`` skips the batches already seen). What it lacks, and this module adds:

- **atomic saves**: ``Trainer`` writes straight into ``checkpoint-N``, so a kill during a save
  leaves a half-written folder that ``get_last_checkpoint`` would pick and then fail to load. Here
  every rank writes into ``.partial-checkpoint-N``; once all ranks are done the main process writes
  a completion marker (``llmtune_checkpoint.json``: step, world size, every file and its size),
  fsyncs, and renames the folder to ``checkpoint-N`` (an atomic ``rename`` on POSIX filesystems).
  A ``checkpoint-N`` folder is therefore complete or absent.
- **resume selection**: ``--resume auto`` takes the newest *complete* checkpoint (marker present,
  every listed file present with its recorded size); ``--resume PATH`` checks the same.
- **signals**: SIGTERM / SIGINT (Ctrl-C) make the run save a checkpoint at the end of the current
  optimizer step and stop; the runner then exits with 128 + signal number (143 / 130).

Module level stays free of torch/transformers imports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from llmtune.errors import LlmtuneError

MARKER = "llmtune_checkpoint.json"
STAGING_PREFIX = ".partial-"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: Fault injection for tests (and for checking a storage setup by hand): ``step:K`` SIGKILLs the
#: process right after optimizer step K, ``save:K`` in the middle of writing checkpoint K.
FAULT_ENV = "LLMTUNE_FAULT"


class RunInterrupted(LlmtuneError):
    """Training stopped on SIGTERM/SIGINT after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ---------------------------------------------------------------------------------------------
# finding checkpoints


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def _listing(folder: Path) -> dict[str, int]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER:
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return files


def incomplete_reason(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete llmtune checkpoint, or None when it is one."""
    folder = Path(folder)
    marker = folder / MARKER
    if not marker.is_file():
        return f"it has no {MARKER} completion marker (the save was interrupted, or it was not written by llmtune)"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        files = dict(info["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MARKER} is unreadable"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"file {name} listed in {MARKER} is missing"
        if path.stat().st_size != size:
            return f"file {name} has {path.stat().st_size} bytes, {MARKER} recorded {size}"
    return None


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders in ``output_dir``, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (step, path)
        for path in output_dir.iterdir()
        if path.is_dir() and (step := checkpoint_step(path)) is not None and incomplete_reason(path) is None
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(spec: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint to resume from for ``--resume SPEC`` (None: start from scratch)."""
    if spec is None:
        return None
    if spec == "auto":
        return latest_checkpoint(output_dir)
    path = Path(spec).expanduser()
    if not path.exists():
        raise LlmtuneError(
            f"--resume {spec}: no such checkpoint folder; pass --resume auto or an existing checkpoint-N"
        )
    if not path.is_dir():
        raise LlmtuneError(f"--resume {spec} is a file: pass a checkpoint-N folder (or --resume auto)")
    if checkpoint_step(path) is None and not (path / MARKER).exists():
        # A run's output folder: take its newest complete checkpoint.
        newest = latest_checkpoint(path)
        if newest is None:
            raise LlmtuneError(f"--resume {spec}: the folder holds no complete checkpoint-N to resume from")
        return newest
    reason = incomplete_reason(path)
    if reason:
        raise LlmtuneError(f"--resume {spec} is not a complete checkpoint: {reason}; pass --resume auto")
    return path


def remove_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete checkpoints and leftover partial saves (``--overwrite``, and a completed run without
    ``train.keep_checkpoints``); returns the folders deleted."""
    removed = []
    for path in sorted(Path(output_dir).glob("*checkpoint-*"), key=lambda p: (checkpoint_step(p) or -1, p.name)):
        if path.is_dir() and (checkpoint_step(path) is not None or path.name.startswith(STAGING_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_partial(output_dir: str | Path) -> None:
    """Delete partial saves left by a killed run (never picked for resuming)."""
    for path in Path(output_dir).glob(f"{STAGING_PREFIX}checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# writing


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def finalize(staging: Path, final: Path, step: int, world_size: int) -> Path:
    """Mark ``staging`` complete and rename it to ``final`` (main process, after all ranks wrote)."""
    files = _listing(staging)
    for name in files:
        _fsync(staging / name)
    marker = staging / MARKER
    tmp = staging / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "world_size": world_size, "files": files}, indent=1), encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, marker)
    _fsync(staging)
    if final.exists():
        # Saving a step again (a resume from an older checkpoint): move the old copy aside first,
        # so a kill in between leaves the old, complete copy or the new one, never a mix.
        old = final.with_name(f"{STAGING_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync(final.parent)
    return final


def maybe_inject_fault(stage: str, step: int) -> None:
    """SIGKILL this process when ``LLMTUNE_FAULT`` asks for it at this stage and step."""
    spec = os.environ.get(FAULT_ENV)
    if spec and spec == f"{stage}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


class AtomicCheckpointMixin:
    """Mixed into ``Trainer``: ``_save_checkpoint`` writes aside, verifies, then renames.

    Mirrors ``Trainer._save_checkpoint`` (transformers 5.x) step for step, with the staging
    folder as target; rotation (``save_total_limit``) and best-model tracking are kept and only
    ever see complete folders. ``checkpoint_writers`` are called with the staging folder on the
    main process, so extra files (the resolved llmtune config) are covered by the marker too.
    """

    checkpoint_writers: list

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_callback import ExportableState
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints

        args, state = self.args, self.state
        step = state.global_step
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        staging = run_dir / f"{STAGING_PREFIX}{final.name}"
        if args.should_save and staging.exists():
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()

        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(str(staging), _internal_call=True)
        maybe_inject_fault("save", step)

        if args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) and state.best_global_step:
            self.accelerator.wait_for_everyone()
            best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}"
            if state.best_global_step == step or best.is_dir():
                state.best_model_checkpoint = str(best)

        if not args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))

        if args.should_save:
            for cb in [c for c in [*self.callback_handler.callbacks, self.control] if isinstance(c, ExportableState)]:
                name = cb.__class__.__name__
                if isinstance(state.stateful_callbacks[name], list):
                    state.stateful_callbacks[name].append(cb.state())
                else:
                    state.stateful_callbacks[name] = cb.state()
            state.save_to_json(str(staging / "trainer_state.json"))
            for writer in getattr(self, "checkpoint_writers", []):
                writer(staging)

        self.accelerator.wait_for_everyone()  # every rank's files (rng_state_K, shards) are written
        if args.should_save:
            finalize(staging, final, step, args.world_size)
            # Step order, not mtime: a re-saved step must not look newer than later ones.
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=args.save_total_limit,
                best_model_checkpoint=state.best_model_checkpoint,
                use_mtime=False,
            )
        self.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# signals


def stop_on_signal_callback() -> Any:
    """A ``TrainerCallback``: on SIGTERM/SIGINT, save a checkpoint after this step and stop.

    The flag is agreed on by all ranks every step (one tiny all-reduce): a signal reaching ranks
    at different steps must not make one rank save (a collective) while another keeps training.
    A second Ctrl-C aborts at once.
    """
    import threading

    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def __init__(self) -> None:
            self.received: int | None = None  # signal seen by this process
            self.stopped: int | None = None  # signal that stopped training (agreed by all ranks)
            self._previous: dict[int, Any] = {}

        def _handler(self, signum: int, frame: Any) -> None:
            if self.received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.received = signum

        def on_train_begin(self, args, state, control, **kwargs):
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._previous[sig] = signal.signal(sig, self._handler)
            return control

        def on_step_end(self, args, state, control, **kwargs):
            signum = self.received or 0
            if args.world_size > 1:
                import torch
                import torch.distributed as dist

                flag = torch.tensor([signum], dtype=torch.int64)
                if dist.get_backend() == "nccl":
                    flag = flag.to(args.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                signum = int(flag.item())
            if signum and self.stopped is None:
                self.stopped = signum
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_train_end(self, args, state, control, **kwargs):
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()
            return control

    return StopOnSignal()


def fault_injection_callback() -> Any:
    from transformers import TrainerCallback

    class FaultInjection(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            maybe_inject_fault("step", state.global_step)
            return control

    return FaultInjection()


def skip_final_checkpoint_callback(stopper: Any, keep: bool) -> Any:
    """A ``TrainerCallback`` that drops the checkpoint Trainer writes when training completes.

    Trainer saves at the end of training (``max_steps`` reached, or the epoch that holds it ends)
    whatever the save schedule. A completed run needs no checkpoint (full optimizer state,
    several times the model's size) next to its saved model: checkpoints exist to resume a run
    that stopped. Kept when ``keep`` (``train.keep_checkpoints``, or best-model selection, which
    may pick the last evaluation's checkpoint) or when a signal stopped the run. A completed run
    deletes its checkpoints once its model is saved, unless ``train.keep_checkpoints``
    (:mod:`llmtune.runner`).
    """
    from transformers import TrainerCallback

    class SkipFinalCheckpoint(TrainerCallback):
        def _drop(self, state: Any, control: Any) -> None:
            if not keep and state.global_step >= state.max_steps and not stopper.stopped:
                control.should_save = False

        def on_step_end(self, args, state, control, **kwargs):
            self._drop(state, control)
            return control

        def on_epoch_end(self, args, state, control, **kwargs):
            self._drop(state, control)
            return control

    return SkipFinalCheckpoint()
