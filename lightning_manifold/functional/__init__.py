"""Pure tensor functions of prediction-space geometry (Mao et al., PNAS 2024; thesis ch. 2).

Shapes: m, k models; N probe samples; C classes. Every function accepts torch tensors (any
device, float32/float64) or numpy arrays and returns torch tensors. Nothing here knows about
Lightning, loggers or files.
"""

from lightning_manifold.functional.alignment import Alignment, procrustes_align
from lightning_manifold.functional.basis import (
    BASIS_WIDTH,
    FourPointBasis,
    four_point_basis,
    four_point_distances,
    progress_weighted_average,
    progress_weights,
)
from lightning_manifold.functional.centroids import CENTROIDS, centroid
from lightning_manifold.functional.distances import (
    bhattacharyya,
    bhattacharyya_coefficients,
    bhattacharyya_from_log_probs,
    bhattacharyya_from_sqrt,
    distance_to_ignorance,
    distance_to_ignorance_from_log_probs,
    distance_to_truth,
    distance_to_truth_from_log_probs,
    geodesic_distance,
    symmetric_kl,
    symmetric_kl_from_log_probs,
)
from lightning_manifold.functional.forecast import StepForecast, eta_per_run, forecast_steps
from lightning_manifold.functional.geodesic import (
    geodesic_point,
    ignorance,
    ignorance_truth_geodesic,
    truth,
)
from lightning_manifold.functional.imprinting import (
    SeenNovelProgress,
    class_feature_sums,
    imprint,
    imprinted_log_probs,
    imprinted_weights,
    seen_novel_progress,
)
from lightning_manifold.functional.inpca import (
    InPCAResult,
    explained_pairwise_distance,
    explained_stress,
    inpca,
    minkowski_sq_distance,
    project,
    project_from_stats,
    time_like,
)
from lightning_manifold.functional.prediction import (
    ClassWeights,
    PredictionGeometry,
    as_log_probs,
    class_weights,
    distances_to_points,
    geodesic_log_probs,
    nonzero_components,
    prediction_geometry,
    sqrt_probs,
    step_at_progress,
)
from lightning_manifold.functional.progress import (
    PROGRESS_TOLERANCE,
    GeodesicProjection,
    geodesic_projection,
    geodesic_projection_from_log_probs,
    per_class_progress_from_log_probs,
    progress,
    progress_from_log_probs,
)
from lightning_manifold.functional.random_projection import (
    project_classes,
    random_column_stochastic,
)
from lightning_manifold.functional.trajectory import (
    reindex_by_progress,
    trajectory_distance,
    trajectory_distances,
    tube_width,
)
from lightning_manifold.functional.tubes import (
    mean_trajectory,
    normalized_tube_distance,
    reindex_runs,
    riemann_length,
    riemann_length_from_log_probs,
    tube_radius,
)

__all__ = [
    "BASIS_WIDTH",
    "CENTROIDS",
    "PROGRESS_TOLERANCE",
    "Alignment",
    "ClassWeights",
    "FourPointBasis",
    "GeodesicProjection",
    "InPCAResult",
    "PredictionGeometry",
    "SeenNovelProgress",
    "StepForecast",
    "as_log_probs",
    "bhattacharyya",
    "bhattacharyya_coefficients",
    "bhattacharyya_from_log_probs",
    "bhattacharyya_from_sqrt",
    "centroid",
    "class_feature_sums",
    "class_weights",
    "distance_to_ignorance",
    "distance_to_ignorance_from_log_probs",
    "distance_to_truth",
    "distance_to_truth_from_log_probs",
    "distances_to_points",
    "eta_per_run",
    "explained_pairwise_distance",
    "explained_stress",
    "forecast_steps",
    "four_point_basis",
    "four_point_distances",
    "geodesic_distance",
    "geodesic_log_probs",
    "geodesic_point",
    "geodesic_projection",
    "geodesic_projection_from_log_probs",
    "ignorance",
    "ignorance_truth_geodesic",
    "imprint",
    "imprinted_log_probs",
    "imprinted_weights",
    "inpca",
    "mean_trajectory",
    "minkowski_sq_distance",
    "nonzero_components",
    "normalized_tube_distance",
    "per_class_progress_from_log_probs",
    "prediction_geometry",
    "procrustes_align",
    "progress",
    "progress_from_log_probs",
    "progress_weighted_average",
    "progress_weights",
    "project",
    "project_classes",
    "project_from_stats",
    "random_column_stochastic",
    "reindex_by_progress",
    "reindex_runs",
    "riemann_length",
    "riemann_length_from_log_probs",
    "seen_novel_progress",
    "sqrt_probs",
    "step_at_progress",
    "symmetric_kl",
    "symmetric_kl_from_log_probs",
    "time_like",
    "trajectory_distance",
    "trajectory_distances",
    "truth",
    "tube_radius",
    "tube_width",
]
