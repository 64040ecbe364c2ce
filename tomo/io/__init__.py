"""Input and output: DICOM series (:mod:`tomo.io.dicom_read`, :mod:`tomo.io.dicom_write`) and the
sinogram exchange file (:mod:`tomo.io.sinogram`). Import from the sub-modules directly."""
