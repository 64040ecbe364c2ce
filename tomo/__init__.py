"""tomo: CT reconstruction toolkit -- DICOM I/O, classical and diffusion-prior reconstruction.

Sub-packages by role:

- :mod:`tomo.io`       DICOM series and sinogram files in and out
- :mod:`tomo.recon`    classical reconstruction (FBP, SIRT, CGLS, TV)
- :mod:`tomo.priors`   the diffusion prior: network, schedule, training, checkpoints
- :mod:`tomo.solvers`  diffusion posterior solvers (DPS, DDS) on any operator
- :mod:`tomo.cli`      the ``tomo`` command
"""
__version__ = "0.1.0"
