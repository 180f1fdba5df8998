"""Evaluation tools: the shared pair evaluation, metrics, result tables and figures.

:mod:`regseg.evaluation.pairs` holds the registrar protocol and :func:`evaluate_pairs` (it
warps with ``regseg.layers``, hence TensorFlow); metrics, tables and figures are NumPy / SciPy /
pandas / matplotlib only. Metric conventions are those of the field's reference evaluators
(Learn2Reg); see each docstring for the unit (voxels or mm) and the source.
"""

from .metrics import (
    L2R_TRE_INTERPOLATION,
    dice,
    folding_fraction,
    hausdorff_distance,
    hd95,
    jacobian_determinant,
    sd_log_jacobian,
    surface_distances,
    tre,
    worst_fraction_mean,
)
from .tables import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_text,
    comparison_table,
    format_mean_std,
    git_commit,
    read_result_csv,
    summarise,
    to_markdown,
    write_result_table,
)
from .figures import DEFAULT_SEG_COLOURS, mid_slices, registration_figure, segmentation_figure
from .pairs import IdentityRegistrar, PairEvaluation, Registrar, evaluate_pairs, warp_labels
from .classical import AntsRegistrar  # antspyx is imported only when it registers

__all__ = [
    "AntsRegistrar",
    "L2R_TRE_INTERPOLATION",
    "dice",
    "folding_fraction",
    "hausdorff_distance",
    "hd95",
    "jacobian_determinant",
    "sd_log_jacobian",
    "surface_distances",
    "tre",
    "worst_fraction_mean",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_text",
    "comparison_table",
    "format_mean_std",
    "git_commit",
    "read_result_csv",
    "summarise",
    "to_markdown",
    "write_result_table",
    "DEFAULT_SEG_COLOURS",
    "mid_slices",
    "registration_figure",
    "segmentation_figure",
    "Registrar",
    "IdentityRegistrar",
    "PairEvaluation",
    "evaluate_pairs",
    "warp_labels",
]
