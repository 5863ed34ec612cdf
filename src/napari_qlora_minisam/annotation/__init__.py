"""Interactive annotation without Qt: one :class:`AnnotationSession` per image, one
:class:`SegmentationEngine` per loaded model. The napari widget (``_qt/``) binds layers to these."""

from .engine import Decoded, SegmentationEngine
from .objects import ObjectRecord, measure_objects, spacing_mm
from .preview import AHEAD, Preview, PreviewJob, PreviewState
from .session import AnnotationSession, CommitResult, RedrawResult

__all__ = ["AHEAD", "AnnotationSession", "CommitResult", "Decoded", "ObjectRecord", "Preview", "PreviewJob",
           "PreviewState", "RedrawResult", "SegmentationEngine", "measure_objects", "spacing_mm"]
