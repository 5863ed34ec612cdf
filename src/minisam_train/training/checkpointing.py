"""Atomic training checkpoints with exact resume, built on Accelerate's ``save_state`` / ``load_state``.

Accelerate already saves and restores what an exact resume needs besides the model: optimizer and
scheduler state, the gradient scaler, registered custom objects and the python / numpy / torch (and CUDA)
RNG states. What it does not do is write atomically, keep the last good checkpoint, or save only the
*trainable* part of a model (a QLoRA run must not rewrite the frozen 4-bit base at every checkpoint).
This module adds those three things.

Layout under ``root``::

    root/step-00000050/   a complete checkpoint (Accelerate files + model_trainable.pt + trainer_state.json)
    root/step-00000100/
    root/latest           text file naming the newest complete checkpoint (replaced atomically)

A checkpoint is written to ``root/.tmp-...``, every file fsynced, then renamed into place; only then does
``latest`` move. A crash at any moment leaves the previous checkpoint intact and ``latest`` pointing at it.

With several processes (``accelerate launch``) every process calls :meth:`~CheckpointManager.save` and
:meth:`~CheckpointManager.load` at the same step, as Accelerate's ``save_state`` / ``load_state`` require:
the main process writes the model, optimizer, scheduler, registered objects, ``trainer_state.json``, the
renames and ``latest``; each process adds only its own RNG state (``random_states_<rank>.pkl``) to the
same temporary folder. Barriers make every process return from ``save`` only once the checkpoint is
complete, so any of them may read ``latest`` afterwards. Exact resume needs the same number of processes.

Usage::

    accelerator = Accelerator(cpu=...)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)   # model optional
    ckpt = CheckpointManager(run_dir / "checkpoints", accelerator, model, keep=2)
    state = ckpt.load()                   # None on a fresh start, else the dict given to save()
    start = state["step"] if state else 0
    for step in range(start, total):
        ...
        if (step + 1) % every == 0:
            ckpt.save(step + 1, {"best_dice": best})
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from napari_qlora_minisam.adapter_training.trainable_state import load_trainable_state_dict, trainable_state_dict

TRAINABLE_FILE = "model_trainable.pt"
STATE_FILE = "trainer_state.json"  # written last inside the temp dir: its presence marks a complete checkpoint
LATEST_FILE = "latest"
PREFIX = "step-"


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file so readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into place: readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint_interval(every, steps: int) -> int:
    """Steps between checkpoints: ``train.checkpoint_every``, or for ``null`` a quarter of the run (at most
    50), so that a run shorter than 50 steps still leaves checkpoints to resume from."""
    if every is None:
        return min(50, max(1, int(steps) // 4))
    return max(1, int(every))


def _unwrap(model):
    # Accelerate may wrap a prepared model (DDP, compile); compare against the module we were given.
    seen = model
    while hasattr(seen, "module") and isinstance(seen.module, torch.nn.Module):
        seen = seen.module
    return getattr(seen, "_orig_mod", seen)


class CheckpointManager:
    """Save / restore a training run under ``root`` atomically; see the module docstring.

    Args:
        root: folder holding the checkpoints of one run.
        accelerator: the run's ``accelerate.Accelerator`` (optimizer / scheduler prepared with it).
        model: the network being trained; only its trainable state (+ float buffers) is saved. It may or
            may not have gone through ``accelerator.prepare``.
        keep: how many complete checkpoints to keep (>= 1; the newest are kept).
    """

    def __init__(self, root, accelerator, model: torch.nn.Module | None = None, keep: int = 2):
        self.root = Path(root)
        self.accelerator = accelerator
        self.model = model
        self.keep = max(1, int(keep))
        self._handles = []
        # One temporary-folder name for all processes: the main process's pid (unique per run).
        self._token = os.getpid()
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            self._token = broadcast_object_list([self._token])[0]
        if model is not None:
            # Stop Accelerate from writing/reading the full state dict of the model we save ourselves.
            self._handles.append(accelerator.register_save_state_pre_hook(self._drop_own_model_on_save))
            self._handles.append(accelerator.register_load_state_pre_hook(self._drop_own_model_on_load))

    # -- accelerate hooks ---------------------------------------------------------------------------
    def _is_own(self, m) -> bool:
        return self.model is not None and _unwrap(m) is _unwrap(self.model)

    def _drop_own_model_on_save(self, models, weights, output_dir):
        for i in reversed(range(len(models))):
            if self._is_own(models[i]) and i < len(weights):
                weights.pop(i)

    def _drop_own_model_on_load(self, models, input_dir):
        for i in reversed(range(len(models))):
            if self._is_own(models[i]):
                models.pop(i)

    def close(self) -> None:
        """Remove the hooks from the accelerator (when it outlives this manager)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- save ---------------------------------------------------------------------------------------
    def save(self, step: int, state: dict | None = None) -> Path:
        """Write checkpoint ``step`` atomically and return its folder (every process calls this).

        Args:
            step: number of optimizer steps done; :meth:`load` returns it as ``state["step"]``.
            state: any JSON-serialisable trainer state (best score, early-stopping counter, log rows...).
        """
        acc = self.accelerator
        main = acc is None or acc.is_main_process
        final = self.root / f"{PREFIX}{int(step):08d}"
        tmp = self.root / f".tmp-{final.name}-{self._token}"
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        self._barrier()
        try:
            # All processes: Accelerate writes the shared state from the main one, an RNG file from each.
            acc.save_state(str(tmp), safe_serialization=False)
            self._barrier()
            if main:
                if self.model is not None:
                    torch.save(trainable_state_dict(_unwrap(self.model)), tmp / TRAINABLE_FILE)
                payload = {"step": int(step), **(state or {})}
                (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1, default=_json_default))
                _fsync_tree(tmp)
                if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
                    old = final.with_name(f".old-{final.name}-{self._token}")
                    shutil.rmtree(old, ignore_errors=True)
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, final)
                _fsync_dir(self.root)
                atomic_write_text(self.root / LATEST_FILE, final.name + "\n")
        except BaseException:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if main:
            self._prune(keep_name=final.name)
        self._barrier()  # the checkpoint is complete (and ``latest`` names it) for every process
        return final

    def _barrier(self) -> None:
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()

    def _prune(self, keep_name: str) -> None:
        complete = self.complete_checkpoints()
        for old in complete[: max(0, len(complete) - self.keep)]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-*"):  # left by a crashed earlier process
            if not stale.name.endswith(f"-{self._token}"):
                shutil.rmtree(stale, ignore_errors=True)

    # -- load ---------------------------------------------------------------------------------------
    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.glob(f"{PREFIX}*") if p.is_dir() and (p / STATE_FILE).exists()]
        return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the one ``latest`` names, else the highest step found."""
        pointer = self.root / LATEST_FILE
        if pointer.exists():
            cand = self.root / pointer.read_text().strip()
            if cand.is_dir() and (cand / STATE_FILE).exists():
                return cand
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def load(self, path=None) -> dict | None:
        """Restore model trainable state, optimizer, scheduler and RNG states; return the trainer state.

        Returns ``None`` when there is no checkpoint to resume from.
        """
        path = Path(path) if path is not None else self.latest()
        if path is None:
            return None
        self.accelerator.load_state(str(path))
        if self.model is not None:
            state = torch.load(path / TRAINABLE_FILE, map_location="cpu", weights_only=True)
            load_trainable_state_dict(_unwrap(self.model), state)
        return json.loads((path / STATE_FILE).read_text())


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
