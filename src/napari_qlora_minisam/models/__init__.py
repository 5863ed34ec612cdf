"""Model backends. Each wraps an ``nn.Module`` behind the same ``SamBackend`` interface."""

from .base import SamBackend

__all__ = ["SamBackend"]
