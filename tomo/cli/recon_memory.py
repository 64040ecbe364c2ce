"""``tomo reconstruct``'s memory check: an over-estimate of one chunk's needs, refused early.

:func:`estimate_memory` counts the float32 working images and sinograms of a batch of slices and
the operator's cached system matrix; :func:`check_memory` refuses a run that would not fit (all the
processes of a node together) with a one-line hint, before any work starts.
"""

from __future__ import annotations

#: images and sinograms a method keeps per slice (iterates, residuals, gradients, the network's
#: activations for the diffusion methods); a deliberate over-estimate: refusing early is cheap
_WORK_IMAGES = {"fbp": 4, "sirt": 8, "cgls": 8, "tv": 16, "dds": 64, "dps": 128}
_WORK_SINOGRAMS = 6


def estimate_memory(geometry, method: str, batch: int) -> int:
    """Bytes a reconstruction of ``batch`` slices needs besides the interpreter (an estimate).

    Parameters
    ----------
    geometry : ParallelBeam2D or FanBeam2D
    method : str
    batch : int
        Slices reconstructed together.

    Returns
    -------
    int
        float32 working images and sinograms of the batch, plus the cached system matrix when the
        operator would build one (:func:`operators.estimate_matrix_bytes`).
    """
    h, w = (int(v) for v in geometry.image_shape)
    views, det = geometry.num_views, geometry.detector_count
    work = 4 * batch * (_WORK_IMAGES.get(method, 16) * h * w + _WORK_SINOGRAMS * views * det)
    matrix = 0
    if h * w <= 2**26:  # beyond that the operator never builds a matrix (and the estimate is slow)
        from operators import estimate_matrix_bytes, matrix_cache_info

        matrix = estimate_matrix_bytes(geometry)
        if matrix > matrix_cache_info().get("max_matrix_bytes", 2**31):
            matrix = 0  # too large to cache: ASTRA computes each projection on the fly
    return work + matrix


def check_memory(source, method: str, batch: int, default_batch: bool, processes: int = 1) -> None:
    from tomo.io.resources import check_memory as check_bytes

    g = source.geometry
    hint = "use --batch-size 1" if batch > 1 else "the grid (image_shape) is too large for this machine"
    if processes > 1:
        hint += " or fewer processes per node"
    what = (
        f"reconstructing {batch} slice{'s' if batch > 1 else ''} at a time on a "
        f"{g.image_shape[0]} x {g.image_shape[1]} grid ({g.num_views} views x {g.detector_count} detectors, "
        f"--method {method})" + (f" in each of {processes} processes on this node" if processes > 1 else "")
    )
    check_bytes(processes * estimate_memory(g, method, batch), what, hint)  # the node's processes share its memory
