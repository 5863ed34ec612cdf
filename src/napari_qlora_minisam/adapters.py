"""LoRA modality adapters in peft's own format, several on one base, switched without reloading.

An adapter directory is what ``PeftModel.save_pretrained`` writes (``adapter_config.json``,
``adapter_model.safetensors``) plus ``minisam_adapter.json``: the modality, the identity of the base it was
trained on, and whatever the trainer measured. An adapter is refused on any other base.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .cache_paths import user_cache_dir
from .errors import AdapterError

METADATA_FILE = "minisam_adapter.json"
DEFAULT_TARGET_MODULES = ("qkv", "q_proj", "v_proj")
# Which top-level submodule holds each trainable part, per backend kind.
PART_PREFIXES = {
    "litemedsam": {"encoder": "image_encoder", "decoder": "mask_decoder"},
    "hf": {"encoder": "vision_encoder", "decoder": "mask_decoder"},
}


@dataclass(frozen=True)
class AdapterEntry:
    """An adapter found on disk."""

    name: str
    path: Path
    metadata: dict

    @property
    def modality(self) -> str:
        return self.metadata.get("modality", "?")


def user_adapters_dir() -> Path:
    """Where ``minisam-train adapt`` writes adapters and the plugin looks for them.

    ``$MINISAM_ADAPTERS_DIR`` if set, else ``~/.cache/napari-qlora-minisam/adapters``.
    """
    return user_cache_dir("adapters", "MINISAM_ADAPTERS_DIR")


def pretrained_adapters_dir() -> Path:
    """Adapters shipped inside the package (trained on the shared sample data; see docs/adapters.md)."""
    return Path(__file__).parent / "pretrained_adapters"


def read_adapter_metadata(path) -> dict:
    """Metadata of an adapter directory, or :class:`AdapterError` naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"Adapter {path} does not exist or is not a directory; train one with "
                           "'minisam-train adapt --modality ct' or pick one from the adapters folder.")
    if not (path / "adapter_config.json").exists():
        raise AdapterError(f"{path} is not a peft adapter directory (no adapter_config.json); "
                           "it must be written by PeftModel.save_pretrained / minisam-train adapt.")
    meta_path = path / METADATA_FILE
    if not meta_path.exists():
        raise AdapterError(f"Adapter {path} has no {METADATA_FILE} (modality, base identity); "
                           "re-export it with minisam-train adapt.")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{meta_path} is not valid JSON ({exc}); re-export the adapter.") from exc


def list_adapters(dirs=None) -> list[AdapterEntry]:
    """Adapters under the given folders (default: shipped ones, then the user's folder)."""
    dirs = [pretrained_adapters_dir(), user_adapters_dir()] if dirs is None else [Path(d) for d in dirs]
    found, seen = [], set()
    for root in dirs:
        if not root.is_dir():
            continue
        for sub in sorted(p for p in root.iterdir() if (p / METADATA_FILE).exists()):
            try:
                meta = read_adapter_metadata(sub)
            except AdapterError:
                continue  # a broken folder must not hide the good ones
            name = meta.get("name", sub.name)
            if name in seen:
                # A user's own "ct" must not hide behind the shipped "ct" (or vice versa): keep both.
                origin = "user" if root == user_adapters_dir() else root.name
                name = f"{name}-{origin}"
            seen.add(name)
            found.append(AdapterEntry(name, sub, meta))
    return found


def lora_target_names(backend, target_modules=DEFAULT_TARGET_MODULES, parts=("encoder", "decoder")) -> list[str]:
    """Full names of the linear layers that get LoRA: leaf name in ``target_modules``, inside ``parts``."""
    prefixes = []
    for part in parts:
        if part not in PART_PREFIXES[backend.kind]:
            raise AdapterError(f"Unknown adapter part {part!r}; choose from 'encoder', 'decoder'.")
        prefixes.append(PART_PREFIXES[backend.kind][part] + ".")
    names = [
        n for n, _ in backend.net.named_modules()
        if n.split(".")[-1] in target_modules and any(n.startswith(p) for p in prefixes)
    ]
    if not names:
        raise AdapterError(f"No layer named {list(target_modules)} in {list(parts)} of {backend.name}.")
    return names


def add_lora(backend, name: str, r: int = 8, alpha: int = 16, dropout: float = 0.05,
             target_modules=DEFAULT_TARGET_MODULES, parts=("encoder", "decoder")):
    """Attach a fresh, trainable LoRA adapter ``name`` to the backend (base stays frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lora_target_names(backend, target_modules, parts), bias="none")
    for p in backend.net.parameters():
        p.requires_grad_(False)
    training = backend.net.training
    if backend.peft_model is None:
        backend.peft_model = get_peft_model(backend.net, config, adapter_name=name)
    else:
        if name in backend.peft_model.peft_config:
            raise AdapterError(f"An adapter named {name!r} is already attached; pick another name.")
        backend.peft_model.add_adapter(name, config)
    # New LoRA modules start in train mode (dropout on) inside an eval network: keep the network's mode.
    backend.peft_model.train(training)
    backend.trainable_adapters.add(name)
    backend.adapter_info.setdefault(name, {"name": name})
    set_adapter(backend, name)
    return backend.peft_model


def load_adapter(backend, path, name: str | None = None, trainable: bool = False) -> str:
    """Load an adapter directory onto ``backend`` after checking it was trained on this base.

    Args:
        name: the name to attach it under (default: the one in its metadata, else the folder's name).
        trainable: load its weights as a trainable adapter (to continue training it); the base stays frozen.
    """
    from peft import PeftModel

    meta = read_adapter_metadata(path)
    name = name or meta.get("name") or Path(path).name
    base = meta.get("base_identity")
    if str(backend.active_adapter or "").startswith("merged:"):
        raise AdapterError(f"{backend.name} has adapter {backend.active_adapter[7:]!r} merged into its weights; "
                           f"load a fresh base to use adapter {name!r}.")
    if base != backend.identity:
        raise AdapterError(
            f"Adapter {name!r} ({path}) was trained on base {meta.get('base_source', '?')} "
            f"[identity {base}], not on {backend.source} [identity {backend.identity}]; load the base it "
            "was made for, or train an adapter for this base with minisam-train adapt."
        )
    if name in backend.adapter_info:
        loaded_from = backend.adapter_info[name].get("_path")
        if loaded_from is None or Path(loaded_from) == Path(path).resolve():
            return name
        raise AdapterError(f"An adapter named {name!r} is already loaded from {loaded_from}; pass a different "
                           f"name to load {path} beside it.")
    if trainable:
        for p in backend.net.parameters():
            p.requires_grad_(False)
    _unpack_4bit(backend)
    try:
        if backend.peft_model is None:
            backend.peft_model = PeftModel.from_pretrained(backend.net, str(path), adapter_name=name,
                                                           is_trainable=trainable)
        else:
            backend.peft_model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
    except Exception as exc:
        raise AdapterError(f"Adapter {path} could not be loaded onto {backend.name}: {exc}") from exc
    backend.net.eval()
    if trainable:
        backend.trainable_adapters.add(name)
    backend.adapter_info[name] = {**meta, "_path": str(Path(path).resolve())}
    set_adapter(backend, name)
    return name


def _unpack_4bit(backend) -> None:
    # peft reads the model's state_dict() to load or save an adapter; on 4-bit layers bitsandbytes answers
    # that by undoing its CPU repacking lossily, which would move the frozen base (see unpack_cpu_4bit).
    if backend.quantization:
        from .quantization import unpack_cpu_4bit

        unpack_cpu_4bit(backend.net)


def set_adapter(backend, name: str | None) -> None:
    """Switch the active adapter (``None`` = bare base) without reloading anything."""
    if name is None:
        if backend.peft_model is not None:
            backend.peft_model.base_model.disable_adapter_layers()
        backend.active_adapter = None
        return
    if backend.peft_model is None or name not in backend.peft_model.peft_config:
        loaded = [] if backend.peft_model is None else list(backend.peft_model.peft_config)
        raise AdapterError(f"No adapter named {name!r} is loaded (loaded: {loaded}); load it first.")
    backend.peft_model.base_model.enable_adapter_layers()
    # peft makes the active adapter trainable by default; adapters loaded from disk stay frozen.
    backend.peft_model.set_adapter(name, inference_mode=name not in backend.trainable_adapters)
    backend.active_adapter = name


def detach_adapter(backend, name: str) -> None:
    """Remove adapter ``name`` from the backend (its folder stays); if it was active, the bare base is now."""
    if backend.peft_model is None or name not in backend.peft_model.peft_config:
        raise AdapterError(f"No adapter named {name!r} is attached to {backend.name}.")
    if backend.active_adapter == name:
        set_adapter(backend, None)
    if list(backend.peft_model.peft_config) == [name]:
        # peft keeps naming a deleted last adapter active; unloading restores the bare network instead.
        backend.peft_model.unload()
        backend.peft_model = None
    else:
        with warnings.catch_warnings():
            # peft names another adapter active; ours stays as set_adapter left it (bare base or another one).
            warnings.filterwarnings("ignore", message=f"Adapter {name} was active which is now deleted")
            backend.peft_model.delete_adapter(name)
    backend.adapter_info.pop(name, None)
    backend.trainable_adapters.discard(name)


def merge_active_adapter(backend) -> None:
    """Fold the active adapter into the base weights for speed (full-precision bases only)."""
    if backend.quantization:
        raise AdapterError("Merging a LoRA adapter into a 4-bit base would re-quantize it; "
                           "load the base with quantize=None to merge.")
    if backend.peft_model is None or backend.active_adapter is None:
        raise AdapterError("No active adapter to merge.")
    name = backend.active_adapter
    backend.net = backend.peft_model.merge_and_unload()
    backend.peft_model = None
    backend.adapter_info = {}
    backend.trainable_adapters = set()
    # The weights are no longer the base's: embeddings cached before must not be reused, and no adapter
    # made for the bare base may be stacked on top (load_adapter refuses while "merged:" is active).
    backend.active_adapter = f"merged:{name}"


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only set it, racing other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def publish_permissions(folder) -> None:
    """Give a folder made with ``tempfile.mkdtemp`` (0700) the modes an ordinary ``mkdir`` / ``open`` would
    (0755 / 0644 under the usual umask), so an adapter renamed into place is readable by other users."""
    mask = _umask()
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def save_adapter(backend, out_dir, name: str, metadata: dict) -> Path:
    """Write adapter ``name`` + metadata to ``out_dir`` atomically (never a half-written adapter)."""
    out_dir = Path(out_dir)
    if backend.peft_model is None or name not in backend.peft_model.peft_config:
        loaded = [] if backend.peft_model is None else list(backend.peft_model.peft_config)
        raise AdapterError(f"No adapter named {name!r} is attached to {backend.name} (attached: {loaded}); "
                           "create it with add_lora or load it first.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The base fields come last: they are facts about this backend, not something a caller may override.
    meta = {"name": out_dir.name, **(metadata or {}), "base_identity": backend.identity,
            "base_source": backend.source, "base_kind": backend.kind}
    _unpack_4bit(backend)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        backend.peft_model.save_pretrained(str(tmp), selected_adapters=[name])
        # peft nests non-default adapters in a subfolder; flatten so the folder is one adapter.
        nested = tmp / name
        if nested.is_dir() and (nested / "adapter_config.json").exists():
            for f in nested.iterdir():
                shutil.move(str(f), tmp / f.name)
            nested.rmdir()
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        publish_permissions(tmp)
        if out_dir.exists():
            backup = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            out_dir.rename(backup)
            tmp.rename(out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
