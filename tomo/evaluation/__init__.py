"""The evaluation protocol as library code (docs/evaluation.md; the benchmarks are thin scripts over it).

- :mod:`tomo.evaluation.simulation` -- real HU slices -> noisy sinograms, no inverse crime.
- :mod:`tomo.evaluation.scores` -- PSNR and SSIM on the [-1000, 1000] HU window.
- :mod:`tomo.evaluation.cases` -- the evaluation slices (dev/dicom), the tuning slices (train/),
  and their simulated cases for a standard configuration.
- :mod:`tomo.evaluation.runner` -- run a registry method (or any callable) on the cases and score it;
  the image-restoration tasks.
- :mod:`tomo.evaluation.baselines` -- the classical baselines of the image tasks.
- :mod:`tomo.evaluation.report` -- the record/summary schema, JSON and Markdown tables.
- :mod:`tomo.evaluation.machine` -- the machine and software a measurement ran on.
"""
