"""The one table of limits on what a user can set or send, shared by every entry point.

The command line, batch files, keyframes and edits files, and the web API check the same ranges,
before any model loads (``docs/limits.md`` lists them). Ranges are inclusive ``(low, high)``.
"""

from __future__ import annotations

# ---- work ---------------------------------------------------------------------------------------
STEPS = (1, 1000)  # DDIM steps: the schedulers have 1000 training timesteps, more steps do not exist
GRAD_STEPS = (0, 50)  # gradient steps on the latent per guided step
SEED = (0, 2**63 - 1)  # seeds of torch generators
FRAMES = (1, 240)  # frames of an animation
KEYFRAMES = (1, 64)  # keyframes of an animation track
OBJECTS = (1, 16)  # objects moved in one edit (an edits file, a web request)
THREADS = (1, 1024)  # torch CPU threads (--threads)
MARGIN = (1, 4096)  # a removal region's margin around the object, work-size pixels (--margin)
PRESETS = ("default", "paper", "fast", "draft")  # named inversion + guidance settings (--preset; diffusion.config.preset)

# ---- transforms ---------------------------------------------------------------------------------
SCALE = (1e-3, 1e3)  # uniform scale about the centroid: outside this, a typo
TRANSLATE = 1e4  # largest |component| of a translation, scene units
ROTATE_DEG = 36_000.0  # largest |angle| of a rotation, degrees (a hundred turns)
FOV_DEG = (0.0, 180.0)  # horizontal field of view, degrees, both ends excluded

# ---- files --------------------------------------------------------------------------------------
IMAGE_SIDE = (16, 4096)  # width and height of an image, mask or depth (any format), from the file's header
IMAGE_PIXELS = 4096 * 4096  # width x height of one image, from the header (a decompression bomb's size)
DEPTH_ASPECT = 0.02  # a depth map of another size is resized to the image if the aspect ratios differ by at most 2 %
JSON_BYTES = 1 << 20  # a keyframes or edits file, or one batch line
JSON_DEPTH = 16  # nesting of a keyframes or edits file, or of a batch line
BATCH_JOBS = 100_000  # lines of a batch file


def in_range(value: float, bounds: tuple[float, float]) -> bool:
    """``low <= value <= high``, False for NaN."""
    return bounds[0] <= value <= bounds[1]
