// Depth you can control: the image's vertical (the floor's normal fitted to the lower part of
// the lifted depth, else the camera's up) for "turn", the object's depth and how near the camera
// it may come, and the depth pad (a screen-space handle: drag up = farther, down = nearer,
// Shift = one tenth).

function decode(b64, Type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}

// least squares y = a x + b z + c over the points `idx` (three.js axes); [a, b, c] or null
function fitPlane(pos, idx) {
  const m = new Float64Array(9), v = new Float64Array(3);
  for (const i of idx) {
    const r = [pos[3 * i], pos[3 * i + 2], 1], y = pos[3 * i + 1];
    for (let p = 0; p < 3; p++) { v[p] += r[p] * y; for (let q = 0; q < 3; q++) m[3 * p + q] += r[p] * r[q]; }
  }
  const det = (a) => a[0] * (a[4] * a[8] - a[5] * a[7]) - a[1] * (a[3] * a[8] - a[5] * a[6]) + a[2] * (a[3] * a[7] - a[4] * a[6]);
  const d = det(m);
  if (!Number.isFinite(d) || Math.abs(d) < 1e-12) return null;
  return [0, 1, 2].map((k) => { const a = m.slice(); for (let p = 0; p < 3; p++) a[3 * p + k] = v[p]; return det(a) / d; });
}

/**
 * The image's frame for edits, from its point cloud (three.js axes: x right, y up, z to the viewer).
 * @returns {{axis: number[], up3: number[], floor: boolean, z0: number, radius: number, minTz: number}}
 *   axis: the turn axis in camera axes (x right, y down, z forward; the world's "down", so that
 *   a level camera gets (0, 1, 0) as before); up3: the world's up in three.js axes; z0: the
 *   object's depth; minTz: the smallest tz that keeps the whole object in front of the camera.
 */
export function imageFrame(cloud) {
  const pos = decode(cloud.positions, Float32Array), obj = decode(cloud.object, Uint8Array);
  const w = cloud.grid_width, h = cloud.grid_height;
  let idx = [];
  for (let r = Math.floor(0.62 * h); r < h; r++) for (let c = 0; c < w; c++) if (!obj[r * w + c]) idx.push(r * w + c);
  let up3 = [0, 1, 0], floor = false;
  for (let round = 0; round < 3 && idx.length >= 12; round++) {  // refit without the points far off the plane
    const p = fitPlane(pos, idx);
    if (!p) break;
    const res = idx.map((i) => Math.abs(pos[3 * i + 1] - (p[0] * pos[3 * i] + p[1] * pos[3 * i + 2] + p[2])));
    const med = [...res].sort((a, b) => a - b)[Math.floor(res.length / 2)];
    const n = Math.hypot(p[0], 1, p[1]), cand = [-p[0] / n, 1 / n, -p[1] / n];
    const depth = Math.abs(pos[3 * idx[Math.floor(idx.length / 2)] + 2]) || 1;
    if (round === 2 || med < 1e-3 * depth) {
      if (cand[1] > Math.cos((50 * Math.PI) / 180) && med < 0.03 * depth) { up3 = cand; floor = true; }
      break;
    }
    idx = idx.filter((_, k) => res[k] <= 2 * med + 1e-9);
  }
  const zs = Array.from({ length: cloud.count }, (_, i) => -pos[3 * i + 2]).sort((a, b) => a - b);
  const pivot = cloud.pivot || [0, 0, -zs[Math.floor(zs.length / 2)]];  // no object: the median depth
  const z0 = -pivot[2];
  let radius = 0;
  for (let i = 0; i < cloud.count; i++) {
    if (obj[i]) radius = Math.max(radius, Math.hypot(pos[3 * i] - pivot[0], pos[3 * i + 1] - pivot[1], pos[3 * i + 2] - pivot[2]));
  }
  const frame = { axis: [-up3[0], up3[1], up3[2]], up3, floor, z0, radius };  // axis: the world's down, camera axes
  frame.minTz = minTz(frame, 1);
  return frame;
}

/** The smallest tz (camera axes) that keeps an object scaled by `scale` in front of the camera. */
export function minTz(frame, scale = 1) {
  return 0.1 * frame.z0 - frame.z0 + Math.max(scale, 1e-3) * frame.radius;
}

/**
 * The depth pad: a vertical handle over the 3D view. Drag up = farther, down = nearer (scene
 * units per pixel: the object's depth times the view's vertical extent per pixel), Shift = a
 * tenth; arrow keys too. `get()` is the current tz, `set(tz, dragging)` applies one.
 */
export class DepthPad {
  constructor(el, view, { get, set, limits, onDrag }) {
    this.el = el;
    this.view = view;
    Object.assign(this, { get, set, limits, onDrag });
    this.drag = null;
    el.addEventListener('pointerdown', (e) => this.down(e));
    el.addEventListener('pointermove', (e) => this.move(e));
    el.addEventListener('pointerup', (e) => this.up(e));
    el.addEventListener('pointercancel', (e) => this.up(e));
    el.addEventListener('keydown', (e) => this.key(e));
  }

  unitsPerPx() {
    const l = this.limits();
    if (!l) return 0;
    const h = Math.max(1, this.view.clientHeight);
    return (l.z0 * 2 * Math.tan((l.fovDeg * Math.PI) / 360)) / h;
  }

  apply(tz, dragging) {
    const l = this.limits();
    if (!l) return;
    const v = Math.min(l.maxTz, Math.max(l.minTz, tz));
    this.set(v, dragging);
    this.el.setAttribute('aria-valuenow', v.toFixed(3));
  }

  down(e) {
    if (!this.limits()) return;
    e.preventDefault();
    this.el.setPointerCapture(e.pointerId);
    this.drag = { y: e.clientY, tz: this.get() };
    this.el.classList.add('dragging');
    this.onDrag(true);
  }

  move(e) {
    if (!this.drag) return;
    const dy = e.clientY - this.drag.y;
    this.drag.y = e.clientY;
    this.drag.tz += -dy * this.unitsPerPx() * (e.shiftKey ? 0.1 : 1);
    const l = this.limits();
    this.drag.tz = Math.min(l.maxTz, Math.max(l.minTz, this.drag.tz));
    this.apply(this.drag.tz, true);
  }

  up(e) {
    if (!this.drag) return;
    this.drag = null;
    this.el.classList.remove('dragging');
    if (this.el.hasPointerCapture(e.pointerId)) this.el.releasePointerCapture(e.pointerId);
    this.onDrag(false);
  }

  key(e) {
    const l = this.limits();
    if (!l) return;
    const step = 0.02 * l.z0 * (e.shiftKey ? 0.1 : 1);
    const d = { ArrowUp: step, ArrowDown: -step, PageUp: 10 * step, PageDown: -10 * step }[e.key];
    if (d === undefined) return;
    e.preventDefault();
    this.apply(this.get() + d, false);
  }
}
