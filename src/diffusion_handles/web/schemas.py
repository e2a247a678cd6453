"""Pydantic schemas of the JSON API (they make up the OpenAPI document at ``/openapi.json``)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from diffusion_handles import limits
from diffusion_handles.animation import MAX_FRAMES
from diffusion_handles.geometry import HandleEdit

Finite = Annotated[float, Field(allow_inf_nan=False)]
Vec3 = tuple[Finite, Finite, Finite]
# the ranges every entry point states (diffusion_handles.limits)
Offset = Annotated[float, Field(ge=-limits.TRANSLATE, le=limits.TRANSLATE, allow_inf_nan=False)]
Steps = Annotated[int, Field(ge=limits.STEPS[0], le=limits.STEPS[1])]
Seed = Annotated[int, Field(ge=limits.SEED[0], le=limits.SEED[1])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Transform(Strict):
    """A 3D edit of the selected object. Camera axes: x right, y down, z forward (away from
    the camera); scene units are the depth map's units. Rotation and scale are about the
    object's centroid; applied as scale and rotate, then translate."""

    translate: tuple[Offset, Offset, Offset] = (0.0, 0.0, 0.0)
    rotate_axis: Vec3 = (0.0, 1.0, 0.0)
    rotate_deg: Finite = Field(0.0, ge=-limits.ROTATE_DEG, le=limits.ROTATE_DEG)
    scale: float = Field(1.0, ge=limits.SCALE[0], le=limits.SCALE[1], allow_inf_nan=False,
                         description=f"uniform scale, in [{limits.SCALE[0]:g}, {limits.SCALE[1]:g}]")

    @model_validator(mode="after")
    def _axis_nonzero(self) -> Transform:
        if not math.isfinite(sum(a * a for a in self.rotate_axis)):
            raise ValueError(f"rotate_axis: expected an axis of finite length, got {list(self.rotate_axis)}")
        if self.rotate_deg != 0 and math.sqrt(sum(a * a for a in self.rotate_axis)) < 1e-12:
            raise ValueError(f"rotate_axis: expected a non-zero axis when rotate_deg != 0, got {list(self.rotate_axis)}")
        return self

    def to_edit(self) -> HandleEdit:
        return HandleEdit(tuple(self.translate), tuple(self.rotate_axis), self.rotate_deg, self.scale)


MAX_OBJECTS = limits.OBJECTS[1]  # objects one request may move (the selected one and the others listed)
MODES = ("object", "camera")


def _check_mode(v: object) -> str:
    if not isinstance(v, str) or v not in MODES:  # the error answer adds what arrived
        raise ValueError('expected "object" (move the selected object) or "camera" (move the camera)')
    return v


class ObjectEdit(Strict):
    """Another object moved in the same render: one of the session's masks (``mask``: its
    index, as in ``SessionInfo.masks``) and its transform (about that object's centroid)."""

    mask: int = Field(ge=0, strict=True, description="index into the session's masks (an integer)")
    transform: Transform


class EditRequest(Strict):
    """What moves: ``mode`` "object" (the default) moves the selected object by ``transform``
    and each entry of ``objects`` by its own (one z-buffer, one guided generation); "camera"
    moves the camera by ``transform`` (translation in camera axes, rotation about the camera
    centre, no scale; no mask needed, no ``objects``)."""

    transform: Transform
    mode: str = Field("object", description='"object" or "camera"')
    objects: list[ObjectEdit] = Field(default_factory=list, description=f"other objects moved too (at most {MAX_OBJECTS - 1}, "
                                      "each mask once, not the selected one)")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: object) -> str:
        return _check_mode(v)

    @field_validator("objects", mode="before")
    @classmethod
    def _objects_count(cls, v: object) -> object:
        if isinstance(v, list) and len(v) > MAX_OBJECTS - 1:
            raise ValueError(f"expected at most {MAX_OBJECTS - 1} other objects ({MAX_OBJECTS} with the selected one), "
                             f"{len(v)} listed")
        return v


class Error(BaseModel):
    """Every 4xx/5xx answer: ``detail`` is one line naming the field, what was expected and
    what arrived."""

    detail: str


class SceneInfo(BaseModel):
    id: str
    title: str
    source: Literal["builtin", "tinyworld"]


class Limits(BaseModel):
    max_upload_mb: float
    max_side: int
    work_side: int
    max_animation_frames: int = Field(MAX_FRAMES, description="the most frames an animation may have")


class Info(BaseModel):
    version: str
    model: str = Field(description="the diffusion model: a hub id, 'tinyworld', or a local folder's name (never its path)")
    render_unavailable: str | None = Field(None, description="why rendering is unavailable, or null")
    selection_modes: list[str] = Field(description="mask selection modes: mask (scene objects), upload, and click / text "
                                       "only when the segmenter's weights (and, for text, the detector's) are on this "
                                       "machine or can be downloaded now")
    depth_estimation: bool = Field(description="whether an uploaded image may come without a depth map (the depth "
                                   "estimator's weights are on this machine or can be downloaded now)")
    scenes: list[SceneInfo]
    limits: Limits
    default_fov_deg: float


class MaskInfo(BaseModel):
    index: int
    name: str
    pixels: int


class SessionInfo(BaseModel):
    id: str = Field(description="server-generated random token")
    width: int
    height: int
    prompt: str
    fov_deg: float
    source: str
    masks: list[MaskInfo]
    selected: int | None
    image_url: str
    depth_url: str
    points_url: str
    mask_url: str | None


class SceneRequest(Strict):
    scene: str = Field("demo", max_length=64, description="an id from GET /api/scenes")


class SelectRequest(Strict):
    """Choose the object to edit: ``scene`` (index into the session's masks), ``click`` (pixel
    x, y for a point-prompted segmenter) or ``text`` (a query such as "the red cube")."""

    mode: Literal["mask", "click", "text"]
    index: int | None = Field(None, ge=0)
    x: Finite | None = None
    y: Finite | None = None
    query: str | None = Field(None, max_length=200)


class PointCloud(BaseModel):
    """The session's depth lifted to 3D, sub-sampled every ``stride`` pixels, in three.js axes
    (x right, y up, z towards the viewer, i.e. camera axes with y and z negated). Arrays are
    base64: ``positions`` float32 xyz, ``colors`` uint8 rgb, ``object`` uint8 (1 = selected)."""

    count: int
    stride: int
    grid_width: int
    grid_height: int
    positions: str
    colors: str
    object: str
    pivot: Vec3 | None = Field(description="object centroid, three.js axes")
    pivot_camera: Vec3 | None = Field(description="object centroid, camera axes (x right, y down, z forward)")
    vertical_fov_deg: float
    aspect: float
    point_size: float = Field(description="world size of one sample at unit depth")


class PreviewRequest(EditRequest):
    with_depth: bool = Field(False, description="also composite the edited depth (slower)")


class PreviewResponse(BaseModel):
    image: str = Field(description="the re-rendered image as a PNG data URL (holes magenta)")
    depth: str | None = Field(None, description="colour-mapped edited depth as a PNG data URL")
    width: int
    height: int
    object_pixels: int
    hole_pixels: int
    timings_ms: dict[str, float]


class RenderRequest(EditRequest):
    session_id: str = Field(max_length=64)
    prompt: str | None = Field(None, max_length=500, description="overrides the session's prompt")
    restyle: str | None = Field(None, max_length=200, description="the selected object's new look, e.g. 'a red striped "
                                "sphere': the words of the prompt that name the object are replaced by it for the "
                                "generation (the inversion keeps the prompt), and the new look follows the 3D edit; "
                                "one object only (not with mode 'camera' or objects); info.restyle, info.restyle_words and info.generation_prompt say "
                                "what ran")
    restyle_words: str | None = Field(None, max_length=200, description="with restyle: the words of the prompt that "
                                      "name the object (default: the prompt's phrase naming the selected object, "
                                      "e.g. 'an orange cube' for the object 'orange cube', else the prompt's one "
                                      "object)")
    num_steps: Steps | None = Field(None, description=f"DDIM steps, in [{limits.STEPS[0]}, {limits.STEPS[1]}] "
                                    "(default: the model's, 50)")
    seed: Seed = Field(0, description=f"seed, in [{limits.SEED[0]}, {limits.SEED[1]}]")
    preset: Literal[limits.PRESETS] = Field(  # type: ignore[valid-type]
        "default", description="named settings of inversion and guidance: " + ", ".join(limits.PRESETS) + "; 'draft' is "
        "the page's automatic render while a handle pauses (negative-prompt inversion, one gradient step per guided "
        "step, a fifth of the steps: num_steps, or the server's --steps, is that of the full render it stands for; "
        "10 of 50)")


class AnimateRequest(EditRequest):
    """An animation of what a render with the same ``transform``, ``mode`` and ``objects`` moves:
    each object (or the camera) from the identity to its transform (two keyframes; translation
    linear, rotation by slerp, scale geometric), one guided generation per frame from the same
    inversion as that render (same image, prompt, steps and seed)."""

    frames: int = Field(8, description=f"number of frames, 2..{MAX_FRAMES} (the first is the input's pose, the last the transform)")
    fps: float = Field(8.0, ge=0.5, le=60, allow_inf_nan=False, description="frames per second of the GIF and MP4")
    prompt: str | None = Field(None, max_length=500, description="overrides the session's prompt")
    num_steps: Steps | None = Field(None, description=f"DDIM steps, in [{limits.STEPS[0]}, {limits.STEPS[1]}] "
                                    "(default: the model's, 50)")
    seed: Seed = Field(0, description=f"seed, in [{limits.SEED[0]}, {limits.SEED[1]}]")

    @field_validator("frames", mode="before")
    @classmethod
    def _frames(cls, v: object) -> int:
        ok = isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
        if not ok or not 2 <= v <= MAX_FRAMES:
            raise ValueError(f"expected an integer number of frames in [2, {MAX_FRAMES}]")
        return int(v)


class RemoveRequest(Strict):
    """Remove the selected object: its region (grown for its shadow) regenerated over the
    background depth. ``prompt`` should describe the scene without the object."""

    prompt: str | None = Field(None, max_length=500, description="overrides the session's prompt")
    num_steps: Steps | None = Field(None, description=f"DDIM steps, in [{limits.STEPS[0]}, {limits.STEPS[1]}] "
                                    "(default: the model's, 50)")
    seed: Seed = Field(0, description=f"seed, in [{limits.SEED[0]}, {limits.SEED[1]}]")


class JobStatus(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "error", "cancelled"]
    stage: str = Field(description="the running stage, e.g. 'inversion', 'null-text', 'guided generation', "
                                   "'frame 3/8: guided generation'; 'queued', 'done', 'failed' or 'cancelled' otherwise")
    step: int = Field(description="steps of the stage done (its own count, 1-based)")
    steps: int = Field(0, description="steps of the stage")
    done: int = Field(0, description="steps of all stages done")
    total: int = Field(description="steps of all stages planned (the fraction's denominator)")
    elapsed_s: float | None = Field(None, description="seconds since the job started running (null while queued)")
    eta_s: float | None = Field(None, description="estimated seconds left, from the measured step times (null "
                                                  "before the first step is measured; 0 once done)")
    cancel_requested: bool = Field(False, description="POST /api/jobs/{id}/cancel was called; a running job stops "
                                                      "at the end of its current step")
    fraction: float = Field(description="0..1, reaches 1 when the job is done")
    queue_position: int
    message: str
    error: str | None
    results: dict[str, str] = Field(description="name -> download URL")
    info: dict
    created: float = Field(description="unix time the job was queued")
    started: float | None = None
    finished: float | None = None
