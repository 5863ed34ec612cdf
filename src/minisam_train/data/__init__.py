"""Data readers: COSMOS 1050K layout, 3D label volumes, split files. Every reader lists
:class:`SliceEntry` items cheaply and reads :class:`SliceRecord` slices (image, label, per-class masks).

Example:
    >>> from minisam_train.data import CosmosDataset, split_images
    >>> test = CosmosDataset("../shared/data/cosmos_sample",
    ...                      include=split_images("../shared/data/splits.json", "test"))
    >>> rec = test[0]; rec.image, rec.objects, rec.dataset, rec.modality, rec.image_name
"""

from .cosmos import CosmosDataset, read_dataset_classes, read_modalities
from .errors import DataError
from .records import SliceEntry, SliceRecord, objects_from_label
from .sources import SliceSources
from .splits import read_splits, split_images
from .volumes import VolumeDataset

__all__ = [
    "CosmosDataset", "VolumeDataset", "SliceSources", "SliceEntry", "SliceRecord", "DataError",
    "read_dataset_classes", "read_modalities", "read_splits", "split_images", "objects_from_label",
]
