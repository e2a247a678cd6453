"""Honest progress, cancellation and cost accounting for the facade's step callbacks.

The facade reports every step of every pass through its ``callback`` (``{"stage", "step",
"total", ...}``: DDIM inversion, then null-text optimisation or the reconstruction, then guided
generation). This module turns those calls into:

* :class:`Progress`: each stage named with its own step (``inversion 12/50``, ``null-text 3/50``,
  ``guided generation 30/50``), the seconds elapsed and an estimate of the seconds left, from
  the measured step times (a stage not started yet is estimated from its cost per step in UNet
  forward-equivalents, see :func:`plan_for`, times the measured seconds per forward-equivalent);
* cancellation: ``Progress(cancel=...)`` checks ``cancel`` once per step and raises
  :class:`~diffusion_handles.errors.Cancelled`, so an edit stops within one sampler step (the
  exception leaves through the facade's callback; nothing is cached or written);
* :func:`forward_equivalents`: UNet forward-equivalents of an ``unet_evals`` count (a backward
  counts 2), the cost unit of docs/method.md.

Only :mod:`diffusion_handles.errors` is imported: the layers above (CLI, web, bench) use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from diffusion_handles.errors import Cancelled

# the facade's stage keys -> the names progress shows
LABELS = {"ddim_inversion": "inversion", "null_text": "null-text", "reconstruction": "reconstruction",
          "guided_generation": "guided generation", "edit": "guided generation", "removal": "removal"}

Cancel = Callable[[], bool] | object  # an object with is_set() (threading.Event), or a callable returning True


def is_cancelled(cancel: Cancel | None) -> bool:
    """Whether ``cancel`` asks to stop: ``None`` never; an object with ``is_set()`` (a
    ``threading.Event``) when it is set; a callable when it returns a true value (it may also
    raise :class:`Cancelled` itself)."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    if callable(cancel):
        return bool(cancel())
    raise TypeError(f"cancel: expected a threading.Event-like object or a callable, got {type(cancel).__name__}")


def check_cancel(cancel: Cancel | None, where: str = "") -> None:
    """Raise :class:`Cancelled` (``"cancelled during <where>"``) when ``cancel`` is set."""
    if is_cancelled(cancel):
        raise Cancelled(f"cancelled during {where}" if where else "cancelled")


def cancellable(callback: Callable[[dict], None] | None, cancel: Cancel | None) -> Callable[[dict], None] | None:
    """A facade callback that calls ``callback`` and then stops the run (raises
    :class:`Cancelled`) once ``cancel`` is set: ``dh.edit(inv, T, callback=cancellable(cb, event))``."""
    if cancel is None:
        return callback

    def call(info: dict) -> None:
        if callback is not None:
            callback(info)
        stage = LABELS.get(str(info.get("stage", "")), str(info.get("stage", "a step")))
        check_cancel(cancel, f"{stage} {int(info.get('step', 0)) + 1}/{info.get('total', '?')}")

    return call


def forward_equivalents(unet_evals: Mapping[str, Mapping[str, int]] | None) -> int:
    """UNet forward-equivalents of ``{stage: {"forward": n, "backward": m, ...}}`` (an
    ``EditOutput.unet_evals`` or ``InvertedImage.unet_evals``): ``sum(n + 2 m)``."""
    total = 0
    for counts in (unet_evals or {}).values():
        total += int(counts.get("forward", 0)) + 2 * int(counts.get("backward", 0))
    return total


# ---------------------------------------------------------------------------------- plans
@dataclass
class Stage:
    """One planned pass: the facade's stage ``key``, its ``steps``, its estimated cost per step
    in UNet forward-equivalents (``weight``), and a ``prefix`` shown before its name (``frame 3/8``)."""

    key: str
    steps: int
    weight: float = 1.0
    prefix: str = ""

    @property
    def label(self) -> str:
        name = LABELS.get(self.key, self.key)
        return f"{self.prefix}: {name}" if self.prefix else name


def plan_for(inversion=None, guidance=None, *, edits: int = 1, steps: int | None = None,
             frames: bool = False, edit_key: str = "guided_generation") -> list[Stage]:
    """The passes of an inversion (``inversion``: an ``InversionConfig``, ``None``: reused) and
    ``edits`` guided generations (``guidance``: a ``GuidanceConfig``) with their cost per step:

    * inversion: 1 forward per step; null-text: 2 + 3 per Adam step (at most
      ``null_inner_steps``); reconstruction: 2 (1 for negative-prompt inversion);
    * guided generation: the CFG evaluations (2, or 1 after a negative-prompt inversion) plus
      ``grad_steps`` x 3 on each guided step, spread over all steps (the default: 442 / 50).

    ``steps``: the generation's steps when there is no ``inversion`` to read them from;
    ``frames``: prefix each generation ``frame i/N``; ``edit_key``: the generation's stage
    (``"removal"`` for a removal).
    """
    n = int(steps if steps is not None else getattr(inversion, "num_steps", 50))
    method = getattr(inversion, "method", "null-text")
    plan: list[Stage] = []
    if inversion is not None:
        plan.append(Stage("ddim_inversion", n, 1.0))
        if method == "null-text":
            plan.append(Stage("null_text", n, 2.0 + 3.0 * int(getattr(inversion, "null_inner_steps", 5))))
        else:
            plan.append(Stage("reconstruction", n, 1.0 if method == "negative-prompt" else 2.0))
    cfg = 1.0 if method == "negative-prompt" else 2.0
    guided = 0.0
    if guidance is not None and n:
        until = guidance.resolved_guide_until(n) if hasattr(guidance, "resolved_guide_until") else n
        guided = until * int(getattr(guidance, "grad_steps", 0)) * 3.0 / n
    for i in range(edits):
        plan.append(Stage(edit_key, n, cfg + guided, f"frame {i + 1}/{edits}" if frames else ""))
    return plan


# ---------------------------------------------------------------------------------- progress
@dataclass(frozen=True)
class ProgressEvent:
    """Where a run stands after a step: ``stage`` (its name, e.g. ``"null-text"`` or
    ``"frame 3/8: guided generation"``) and its own ``step`` (1-based, steps done) of ``steps``;
    ``done`` of ``total`` steps over all planned stages; ``elapsed_s`` since the run started;
    ``eta_s`` the estimated seconds left for the whole plan (``None`` before a step is measured)."""

    stage: str
    step: int
    steps: int
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None

    def text(self) -> str:
        """``inversion 12/50, 3.1 s elapsed, about 9 s left``."""
        left = "" if self.eta_s is None else f", about {format_seconds(self.eta_s)} left"
        return f"{self.stage} {self.step}/{self.steps}, {format_seconds(self.elapsed_s)} elapsed{left}"

    def to_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "steps": self.steps, "done": self.done,
                "total": self.total, "elapsed_s": round(self.elapsed_s, 3),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 3)}


def format_seconds(s: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s"


class Progress:
    """Per-step progress of a run of planned stages, with an estimate of the time left, and
    cancellation once per step.

    Args:
        plan: the stages expected, in order (:func:`plan_for`); a stage that reports without
            being planned is added, and a planned stage's ``steps`` follow what it reports.
        report: called with a :class:`ProgressEvent` after every step.
        cancel: checked after every step (see :func:`is_cancelled`); when set, the step's
            callback raises :class:`Cancelled` and the run stops.
        clock: seconds (``time.perf_counter``).

    Use :meth:`callback` (or the object itself) as the facade's ``callback``.
    """

    def __init__(self, plan: Iterable[Stage] = (), *, report: Callable[[ProgressEvent], None] | None = None,
                 cancel: Cancel | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.plan: list[Stage] = list(plan)
        self.report = report
        self.cancel = cancel
        self.clock = clock
        self.started = clock()
        self._last = self.started
        self._pos = -1  # index in plan of the running stage
        self._steps_done: dict[int, int] = {}  # plan index -> steps done
        self._measured: dict[str, list[float]] = {}  # stage key -> [seconds, steps]
        self._units = [0.0, 0.0]  # [seconds, forward-equivalents] over all measured steps
        self.event: ProgressEvent | None = None

    # -------------------------------------------------------------- feeding
    def callback(self, stage: str | None = None, prefix: str = "") -> Callable[[dict], None]:
        """A facade callback whose calls count as stage ``stage`` (default: the call's own
        ``"stage"``, else guided generation) shown after ``prefix``."""

        def call(info: dict) -> None:
            self.step(stage or str(info.get("stage") or "guided_generation"), int(info["step"]), int(info["total"]),
                      prefix)

        return call

    def __call__(self, info: dict) -> None:
        self.step(str(info.get("stage") or "guided_generation"), int(info["step"]), int(info["total"]))

    def mark(self) -> None:
        """Restart the step clock (work between passes that is not a step, e.g. loading)."""
        self._last = self.clock()

    def step(self, key: str, step: int, total: int, prefix: str = "") -> ProgressEvent:
        """Record step ``step`` (0-based) of ``total`` of stage ``key``; report; check cancel."""
        now = self.clock()
        dt, self._last = max(0.0, now - self._last), now
        pos = self._locate(key, prefix, total)
        stage = self.plan[pos]
        stage.steps = total
        self._steps_done[pos] = step + 1
        seen = self._measured.setdefault(key, [0.0, 0.0])
        seen[0] += dt
        seen[1] += 1
        self._units[0] += dt
        self._units[1] += stage.weight
        ev = ProgressEvent(stage.label, step + 1, total, self.done, self.total, now - self.started, self.eta())
        self.event = ev
        if self.report is not None:
            self.report(ev)
        check_cancel(self.cancel, f"{stage.label} {step + 1}/{total}")
        return ev

    def _locate(self, key: str, prefix: str, total: int) -> int:
        """The plan index of the running stage ``(key, prefix)``: the current one, or the next
        planned one of that key, or a new one appended."""
        if 0 <= self._pos < len(self.plan) and (self.plan[self._pos].key, self.plan[self._pos].prefix) == (key, prefix) \
                and self._steps_done.get(self._pos, 0) < self.plan[self._pos].steps:
            return self._pos
        for i in range(self._pos + 1, len(self.plan)):
            if self.plan[i].key == key:
                self.plan[i].prefix = prefix or self.plan[i].prefix
                for skipped in self.plan[self._pos + 1 : i]:  # planned but not run (an inversion from the cache)
                    skipped.steps = 0
                self._pos = i
                return i
        weight = next((s.weight for s in self.plan if s.key == key), 1.0)
        self.plan.insert(self._pos + 1, Stage(key, total, weight, prefix))
        self._pos += 1
        self._steps_done = {(i + 1 if i >= self._pos else i): v for i, v in self._steps_done.items()}
        return self._pos

    # -------------------------------------------------------------- reading
    @property
    def done(self) -> int:
        """Steps done over all stages."""
        return sum(self._steps_done.values())

    @property
    def total(self) -> int:
        """Steps over all planned stages."""
        return sum(s.steps for s in self.plan)

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def seconds_per_step(self, stage: Stage) -> float | None:
        """Measured seconds per step of ``stage``'s kind, else its weight times the measured
        seconds per forward-equivalent (``None`` before any step is measured)."""
        seconds, steps = self._measured.get(stage.key, (0.0, 0.0))
        if steps:
            return seconds / steps
        if self._units[1] <= 0:
            return None
        return stage.weight * self._units[0] / self._units[1]

    def estimate(self, stages: Sequence[Stage]) -> float | None:
        """Estimated seconds for ``stages`` from the step times measured so far."""
        total = 0.0
        for s in stages:
            per = self.seconds_per_step(s)
            if per is None:
                return None
            total += per * s.steps
        return total

    def eta(self) -> float | None:
        """Estimated seconds left for the whole plan."""
        left = []
        for i, s in enumerate(self.plan):
            remaining = s.steps - self._steps_done.get(i, 0)
            if remaining > 0:
                left.append(Stage(s.key, remaining, s.weight))
        return self.estimate(left) if left else 0.0
