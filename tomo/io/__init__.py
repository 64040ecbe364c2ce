"""Input and output: DICOM series (:mod:`tomo.io.dicom_read`, :mod:`tomo.io.dicom_write`), any CT
volume by path (:mod:`tomo.io.volume`: ``read_volume``; the shared types ``CTVolume`` and
``VolumeReadError`` live in :mod:`tomo.io.volume_types` and are re-exported there) and the
sinogram exchange file (:mod:`tomo.io.sinogram`). Import from the sub-modules directly."""
