"""Qt-free reading and writing of radiology formats (NIfTI, DICOM series).

Both readers return arrays in napari's axis order (z, y, x) with the voxel spacing in mm in the same
order, and a 4x4 ``affine`` that maps the *reversed* array's indices (x, y, z: the NIfTI voxel order) to
RAS+ millimetres, the convention of NIfTI, ITK-SNAP and 3D Slicer. A layer that keeps that affine in its
``metadata[AFFINE_KEY]`` can be written back as NIfTI so that it overlays its source image exactly.
"""

AFFINE_KEY = "affine"  # layer metadata: 4x4 voxel (x, y, z) -> RAS mm of the source image

__all__ = ["AFFINE_KEY"]
