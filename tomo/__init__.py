"""tomo: CT reconstruction toolkit -- DICOM I/O, classical and diffusion-prior reconstruction.

Sub-packages by layer, top to bottom (a layer imports only the ones below it; the contract is
checked by ``lint-imports``, configured in ``pyproject.toml``):

- :mod:`tomo.cli`         the ``tomo`` command
- :mod:`tomo.evaluation`  the evaluation protocol: simulated scans, PSNR/SSIM scores
- :mod:`tomo.methods`     reconstruction methods by name (classical and diffusion), image tasks
- :mod:`tomo.recon`       classical reconstruction (FBP, SIRT, CGLS, TV)
- :mod:`tomo.solvers`     diffusion posterior solvers (DPS, DDS) on any operator
- :mod:`tomo.priors`      the diffusion prior: network, schedule, training, checkpoints
- :mod:`tomo.io`          DICOM series and sinogram files in and out
- :mod:`operators`        (a separate package) the forward models every layer uses

Importing ``tomo`` itself is cheap: it imports neither torch nor any sub-package.
"""

# The one place the version is written: setup.cfg reads it (``version = attr: tomo.__version__``),
# ``tomo --version`` prints it and CHANGELOG.md names it.
__version__ = "0.1.0"
