"""The objects layer made for a NIfTI/DICOM image carries its affine, so the NIfTI writer overlays the mask."""

import nibabel as nib
import numpy as np
from napari.layers import Image

from napari_qlora_minisam._qt.layers import make_layer
from napari_qlora_minisam._writer import write_labels_nifti


def test_objects_layer_carries_the_image_affine(tmp_path):
    affine = np.array([[-0.7, 0, 0, 90.0], [0, 0.8, 0, -120.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    image = Image(np.zeros((5, 6, 7), np.int16), scale=(2.5, 0.8, 0.7), metadata={"affine": affine})
    objects = make_layer("objects", image)
    np.testing.assert_array_equal(objects.metadata["affine"], affine)
    objects.data[2, 3, 4] = 1
    [out] = write_labels_nifti(str(tmp_path / "objects.nii.gz"), objects.data, objects._get_state())
    np.testing.assert_allclose(nib.load(out).affine, affine)
    assert "affine" not in make_layer("objects", Image(np.zeros((4, 4)))).metadata
