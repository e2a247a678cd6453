// Conversions between the gizmo (three.js axes: x right, y up, z towards the viewer) and a
// HandleEdit (camera axes: x right, y down, z forward). The two frames differ by a rotation of
// 180 degrees about x, S = diag(1, -1, -1), so a vector v maps to S v and a rotation R to
// S R S: same angle, axis S a. Pure functions on plain arrays, so they can be unit-tested.

/** Camera-axes vector <-> three.js-axes vector (the map is its own inverse). */
export function flipYZ(v) {
  return [v[0], -v[1], -v[2]];
}

/**
 * The HandleEdit of a gizmo pose.
 * @param {number[]} pivot3 object centroid, three.js axes
 * @param {number[]} position gizmo position, three.js axes (starts at pivot3)
 * @param {number[]} quaternion gizmo rotation [x, y, z, w], three.js axes
 * @param {number} scale uniform scale
 * @param {number[]} fallbackAxis rotate_axis to keep when the rotation is the identity
 * @returns {{translate: number[], rotate_axis: number[], rotate_deg: number, scale: number}}
 */
export function editFromPose(pivot3, position, quaternion, scale, fallbackAxis = [0, 1, 0]) {
  const t3 = [position[0] - pivot3[0], position[1] - pivot3[1], position[2] - pivot3[2]];
  let [x, y, z, w] = quaternion;
  const n = Math.hypot(x, y, z, w) || 1;
  x /= n; y /= n; z /= n; w /= n;
  if (w < 0) { x = -x; y = -y; z = -z; w = -w; }  // angle in [0, 180]
  const s = Math.hypot(x, y, z);
  const angle = 2 * Math.atan2(s, w);  // radians, [0, pi]
  let axis;
  let deg = (angle * 180) / Math.PI;
  if (s < 1e-9 || deg < 1e-7) {
    axis = fallbackAxis.slice();
    deg = 0;
  } else {
    axis = flipYZ([x / s, y / s, z / s]);
  }
  return { translate: flipYZ(t3), rotate_axis: axis, rotate_deg: deg, scale };
}

/**
 * The gizmo pose of a HandleEdit (inverse of editFromPose).
 * @returns {{position: number[], quaternion: number[], scale: number}}
 */
export function poseFromEdit(pivot3, edit) {
  const t3 = flipYZ(edit.translate);
  const position = [pivot3[0] + t3[0], pivot3[1] + t3[1], pivot3[2] + t3[2]];
  let quaternion = [0, 0, 0, 1];
  const a = flipYZ(edit.rotate_axis);
  const n = Math.hypot(a[0], a[1], a[2]);
  if (edit.rotate_deg !== 0 && n > 1e-12) {
    const half = (edit.rotate_deg * Math.PI) / 360;
    const sh = Math.sin(half) / n;
    quaternion = [a[0] * sh, a[1] * sh, a[2] * sh, Math.cos(half)];
  }
  return { position, quaternion, scale: edit.scale };
}

/**
 * Make a scale vector uniform: keep the component that moved furthest from `previous`, clamped
 * to [0.05, 20] (a drag that starts on the gizmo's exact centre divides by ~0 in three.js).
 */
export function uniformScale(sx, sy, sz, previous) {
  const c = [sx, sy, sz];
  let best = c[0];
  for (const v of c) if (Math.abs(v - previous) > Math.abs(best - previous)) best = v;
  const s = Math.abs(best);
  return Number.isFinite(s) ? Math.min(20, Math.max(0.05, s)) : previous;
}
