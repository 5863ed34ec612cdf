"""The widget's compute as plain generators, run by ``workers.start`` off the Qt thread.

Each yields what a progress bar shows and returns its result. Model use is serialised by the engine's own
lock (``annotation.SegmentationEngine``), so an adapter switch never lands between a ``set_image`` and
its decode.
"""

from __future__ import annotations

from ..errors import AdapterError


def load_model_task(source: str, quantize: str | None, device: str, adapter=None):
    """``(backend, warning)``: the model, with ``adapter`` (``(path, name)``) loaded and active if it fits."""
    yield f"Loading {source}{' (4-bit NF4)' if quantize else ''}…"
    from ..adapters import load_adapter
    from ..loading import load_model

    backend = load_model(source, quantize=quantize, device=device)
    # Work that holds the GIL for a long time the first time, and would stall the Qt thread on the first adapter
    # switch or training run, is paid here, while the user waits for the model anyway: the first imports of
    # peft and of the trainer, and peft's first LoRA injection, whose isinstance checks against ABCs walk the
    # thousands of classes napari and Qt define until Python's ABC caches know them.
    import copy

    from ..adapter_training import train_adapter  # noqa: F401 - imported for its cost
    from ..adapters import add_lora

    add_lora(copy.deepcopy(backend), "warm-up", r=1, parts=("decoder",))

    warning = None
    if adapter is not None:
        try:
            load_adapter(backend, adapter[0], name=adapter[1])
        except AdapterError as exc:
            warning = f"Loaded {backend.name} without its adapter: {exc}"
    return backend, warning


def switch_adapter_task(engine, entry):
    """Activate adapter ``entry`` (an ``AdapterEntry``, or ``None`` for the bare base); the base stays loaded."""
    from ..adapters import load_adapter, set_adapter

    yield "Switching adapter…"
    with engine.lock:
        if entry is None:
            set_adapter(engine.backend, None)
            return None
        name = load_adapter(engine.backend, entry.path, name=entry.name)
        set_adapter(engine.backend, name)
    return name


def embed_task(engine, plane, intensity: str, z):
    """Embed one plane into the cache; yields ``z`` first when it is not cached (the progress bar's cue)."""
    if not engine.is_embedded(plane, intensity):
        yield z
        engine.embed(plane, intensity)
    return z


def preview_task(job):
    """Decode a :class:`PreviewJob`; yields its slice first when the slice must be embedded."""
    if job.needs_embedding:
        yield job.z
    return job.run()


def propagate_task(session, start_mask, max_slices, **options):
    """Propagation steps (one per slice) of ``session``'s object; returns the ``PropagationResult``.

    ``options``: ``rules``, ``directions``, ``prompt`` of ``AnnotationSession.propagate``."""
    return (yield from session.propagate(start_mask, max_slices, **options))
