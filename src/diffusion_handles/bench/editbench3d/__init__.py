"""3DEditBench in and out: its HDF5 cases, the conversion to this project's camera and edits, scoring.

3DEditBench (neuroailab/3DEditBench, MIT-licensed; Lee et al. 2025, "3D Scene Understanding
Through Local Random Access Sequence Modeling") is a set of real photo pairs with the object's
ground-truth rigid motion. One case is one HDF5 file (``*.hdf5``) of datasets (README of the
repository, "Data Description"):

``image1``, ``image2`` ``(H, W, 3)`` uint8 (input, ground-truth edit), ``K`` ``(3, 3)`` the
intrinsics, ``R`` ``(3, 3)`` and ``T`` ``(3,)`` the object's motion in camera coordinates
(``p' = R p + T``), ``point_prompt`` ``(2,)`` a pixel ``(x, y)`` on the object,
``GT_segment`` ``(H, W)`` the object's mask in ``image1``, and the annotated keypoints
``object_points_image1`` / ``object_points_image2`` ``(N, 2)`` (corresponding object points in
both images) and ``ground_points_image1`` ``(3, 2)``. Files this project writes add three
datasets 3DEditBench's tools ignore: ``depth`` (``(H, W)`` float32 z-depth of ``image1``),
``caption`` (text) and ``GT_segment_image2`` (the moved object's mask in ``image2``).

Conventions (:func:`camera_from_K`, :func:`handle_edit_from_rt`). 3DEditBench uses OpenCV camera
axes (x right, y down, z forward), **the same axes as this project**
(:mod:`diffusion_handles.geometry.camera`), so ``R`` and ``T`` need no change of axes. Pixel
coordinates differ by half a pixel: OpenCV puts pixel ``(i, j)``'s centre at ``(j, i)``, this
project at ``(j + 0.5, i + 0.5)``, so ``c_ours = c_K + 0.5``. This project's camera has square
pixels and its principal point at the image centre: ``fx`` and ``fy`` must agree within 1 %
(the horizontal field of view is ``2 atan(W / 2 fx)``); an off-centre principal point is handled
exactly by editing the largest window centred on it (same focal length, same optical axis, so
the same camera frame and the same ``R, T``) and pasting the result back into the full frame.

Rigid motion to :class:`~diffusion_handles.geometry.transform.HandleEdit`. A HandleEdit rotates
about the pivot ``c`` (the centroid of the lifted object pixels, what the pipeline uses) and then
translates: ``p' = c + t + R (p - c)``. Equal to ``R p + T`` for every ``p`` iff its rotation is
``R`` and ``t = R c + T - c`` (exact; :func:`handle_edit_from_rt`). ``R`` from a least-squares fit
is projected to the nearest rotation (SVD); more than 1e-3 away from one is refused.

Scores (:func:`score_edit`), as 3DEditBench's ``edit_bench/run_inference.py`` and
``edit_bench/utils.py`` (``ImageMetricCalculator``) define them, on the input, the ground truth and
the prediction all resized to 256 x 256: PSNR ``10 log10(1 / MSE)`` (images in [0, 1], 100 when
equal), SSIM (scikit-image, channels last, data range 1), LPIPS (AlexNet; only when the
``lpips`` package and its pretrained weights are already on disk, else ``None`` = "n/a", never
downloaded), and **edit adherence**: the IoU of two point-prompted segments,

* the *target*: the object segmented in the ground truth ``image2`` from its annotated keypoints
  ``object_points_image2``;
* the *prediction*: the object segmented in the edited image from the input keypoints
  ``object_points_image1`` carried into the edited image by the dense optical flow from the input
  to the edited image (the flow at each keypoint's pixel added to it).

Keypoints are scaled to the 256 grid by ``256 / W`` (the benchmark's ``/ 4`` for 1024 px images).
Two stand-ins, recorded with every result: the benchmark's flow network (DPFlow) is replaced by
OpenCV's DIS optical flow (no weights); its segmenter, SAM ViT-H, by SAM from local weights
(``--sam-model``) when present, else by a colour segmenter (``segmenter: "colour"``): the
project's classifier :func:`~diffusion_handles.bench.metrics.segment_object` with the labelled
views the file has (``image1`` with ``GT_segment``; ``image2`` with ``GT_segment_image2`` when
present), keeping the connected components that contain a prompt point (a point prompt selects
the object under it). Numbers with the colour segmenter are not comparable with published ones.
"""

from diffusion_handles.bench.editbench3d.camera import (
    CameraWindow,
    axis_angle,
    camera_from_K,
    handle_edit_from_rt,
    nearest_rotation,
    opencv_K,
    rigid_from_rt,
    rt_from_edit,
)
from diffusion_handles.bench.editbench3d.cli import (
    run_cli,
)
from diffusion_handles.bench.editbench3d.export import (
    case_from_tinyworld,
    export_tinyworld,
)
from diffusion_handles.bench.editbench3d.io import (
    KEYPOINTS,
    REQUIRED,
    EditBenchCase,
    list_cases,
    read_case,
    write_case,
)
from diffusion_handles.bench.editbench3d.report import (
    METRICS,
    format_table,
    write_report,
)
from diffusion_handles.bench.editbench3d.runner import (
    RESULTS_VERSION,
    EditBenchConfig,
    EditBenchRunner,
    run_editbench,
)
from diffusion_handles.bench.editbench3d.scoring import (
    EVAL_SIZE,
    PointSegmenter,
    colour_point_segment,
    dense_flow,
    edit_adherence,
    resize_uint8,
    score_edit,
)

__all__ = [
    "CameraWindow",
    "EVAL_SIZE",
    "EditBenchCase",
    "EditBenchConfig",
    "EditBenchRunner",
    "KEYPOINTS",
    "METRICS",
    "PointSegmenter",
    "REQUIRED",
    "RESULTS_VERSION",
    "axis_angle",
    "camera_from_K",
    "case_from_tinyworld",
    "colour_point_segment",
    "dense_flow",
    "edit_adherence",
    "export_tinyworld",
    "format_table",
    "handle_edit_from_rt",
    "list_cases",
    "nearest_rotation",
    "opencv_K",
    "read_case",
    "resize_uint8",
    "rigid_from_rt",
    "rt_from_edit",
    "run_cli",
    "run_editbench",
    "score_edit",
    "write_case",
    "write_report",
]
