"""The ``models`` list of ``minisam-train eval``: which networks to compare, and under which name.

Each entry is a :func:`napari_qlora_minisam.load_model` source string, or a mapping::

    {source: litemedsam, quantize: nf4, adapters: [runs/adapt/ct], adapter: ct, name: "ct adapter"}

- ``adapters``: adapter folder(s) loaded onto the base (peft format);
- ``adapter``: which one is active. Absent: the first loaded one. ``null`` / ``none`` / ``off`` / ``false``:
  **adapters off** - the bare (possibly quantized) base, with the adapters still loaded, which is how to
  measure what an adapter adds on exactly the same base;
- ``name``: the label in tables and plots (default: the source, ``+nf4``, ``+<adapter>`` or ``+adapters-off``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from napari_qlora_minisam.errors import ModelLoadError

_OFF = ("none", "off", "null", "false", "")
_ACTIVE_FIRST = object()  # "adapter" key absent: keep load_model's choice (the first adapter)


@dataclass(frozen=True)
class ModelEntry:
    """One model to evaluate.

    Attributes:
        name: label in every output.
        source: the ``load_model`` source.
        adapters: adapter folders to load.
        quantize: ``None`` or ``"nf4"``.
        adapter: active adapter name; ``None`` = adapters off (only meaningful with ``adapters``).
        adapter_given: whether ``adapter`` was set explicitly (else the first adapter stays active).
    """

    name: str
    source: str
    adapters: tuple = ()
    quantize: str | None = None
    adapter: str | None = None
    adapter_given: bool = False


def _adapter_choice(raw: Mapping):
    if "adapter" not in raw:
        return _ACTIVE_FIRST
    value = raw["adapter"]
    if value is None or value is False or str(value).strip().lower() in _OFF:
        return None
    return str(value)


def parse_model_entry(raw) -> ModelEntry:
    """A string or mapping from the config -> :class:`ModelEntry` (see the module docstring)."""
    if isinstance(raw, (str, Path)):
        return ModelEntry(name=str(raw), source=str(raw))
    if not isinstance(raw, Mapping):
        raise ModelLoadError(f"A models entry must be a source string or a mapping with 'source'; got {raw!r}.")
    if not raw.get("source"):
        raise ModelLoadError(f"Models entry {dict(raw)} has no 'source' (e.g. source: litemedsam).")
    unknown = set(raw) - {"source", "adapters", "quantize", "adapter", "name"}
    if unknown:
        raise ModelLoadError(f"Models entry {dict(raw)} has unknown key(s) {sorted(unknown)}; "
                             "allowed: source, adapters, adapter, quantize, name.")
    source = str(raw["source"])
    adapters = raw.get("adapters") or ()
    adapters = (str(adapters),) if isinstance(adapters, (str, Path)) else tuple(str(a) for a in adapters)
    quantize = raw.get("quantize") or None
    choice = _adapter_choice(raw)
    given = choice is not _ACTIVE_FIRST
    adapter = None if not given else choice
    if given and adapter is not None and not adapters:
        raise ModelLoadError(f"Models entry {dict(raw)} names adapter {adapter!r} but loads no 'adapters'.")
    name = raw.get("name")
    if not name:
        name = source + (f"+{quantize}" if quantize else "")
        if adapters:
            if not given:
                name += f"+{Path(adapters[0]).name}"
            elif adapter is None:
                name += "+adapters-off"
            else:
                name += f"+{adapter}"
    return ModelEntry(str(name), source, adapters, quantize, adapter, given)


def parse_model_entries(raw_list) -> list[ModelEntry]:
    """The whole ``models`` list; names must be unique because they key every output row."""
    if isinstance(raw_list, (str, Path, Mapping)):
        raw_list = [raw_list]
    entries = [parse_model_entry(r) for r in (raw_list or [])]
    if not entries:
        raise ModelLoadError('No model to evaluate; pass e.g. "models=[litemedsam]".')
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelLoadError(f"Model name(s) {dup} appear twice; give each entry a distinct 'name'.")
    return entries


def load_entry(entry: ModelEntry, device="auto"):
    """Load the backend of ``entry`` with its adapters in the state the entry asks for."""
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import set_adapter

    backend = load_model(entry.source, adapters=list(entry.adapters) or None, quantize=entry.quantize,
                         device=device)
    if entry.adapter_given:
        set_adapter(backend, entry.adapter)
    return backend
