// The 3D view of the page: the lifted point cloud (three.js), the gizmo on the object (or on a
// camera marker in camera mode), orbit controls. Drawn on demand, not every frame.
import { cameraRig } from './modes.js';

let THREE = null;

// Starts the 3D view in `box` and keeps it in `state.three`; `onGizmoChange()` runs as the gizmo
// moves, `onDragging(bool)` when a drag starts or ends. Without WebGL, says so in `box`.
export async function initThree(state, box, { onGizmoChange, onDragging }) {
  try {
    THREE = await import('./vendor/three.bundle.min.js');
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('webgl2') || canvas.getContext('webgl');
    if (!ctx) throw new Error('WebGL is not available in this browser');
    const renderer = new THREE.WebGLRenderer({ canvas, context: ctx, antialias: false, preserveDrawingBuffer: true });
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    box.appendChild(renderer.domElement);
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(0x0d0e11);
    const camera = new THREE.PerspectiveCamera(42, 4 / 3, 0.01, 1000);
    const orbit = new THREE.OrbitControls(camera, renderer.domElement);
    orbit.enableDamping = false;
    const handle = new THREE.Group();
    scene.add(handle);
    const gizmo = new THREE.TransformControls(camera, renderer.domElement);
    gizmo.setSize(0.9);
    gizmo.addEventListener('dragging-changed', (e) => { orbit.enabled = !e.value; onDragging(e.value); });
    gizmo.addEventListener('objectChange', onGizmoChange);
    scene.add(gizmo.getHelper());
    const rig = cameraRig(THREE);  // carries the gizmo in camera mode
    scene.add(rig);
    const t = { renderer, scene, camera, orbit, gizmo, handle, rig, background: null, object: null };
    state.three = t;
    // drawn on demand (a camera, gizmo or scene change), not every frame: an idle page costs nothing
    let pending = false;
    t.requestRender = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; renderer.render(scene, camera); });
    };
    orbit.addEventListener('change', t.requestRender);
    gizmo.addEventListener('change', t.requestRender);
    // where the gizmo's centre is on screen (client pixels); used by the browser tests to drag it
    state.gizmoScreen = () => {
      const v = (gizmo.object || handle).getWorldPosition(new THREE.Vector3()).project(camera);
      const r = renderer.domElement.getBoundingClientRect();
      return { x: r.left + ((v.x + 1) / 2) * r.width, y: r.top + ((1 - v.y) / 2) * r.height };
    };
    const resize = () => {
      const w = box.clientWidth, h = box.clientHeight;
      renderer.setSize(w, h, false);
      renderer.domElement.style.width = '100%';
      renderer.domElement.style.height = '100%';
      camera.aspect = w / h;
      camera.updateProjectionMatrix();
      updatePointSize(state);
    };
    new ResizeObserver(resize).observe(box);
    resize();
  } catch (e) {
    state.three = null;
    box.innerHTML = `<p class="error" style="padding:1em">3D view unavailable: ${e.message}. Use the number fields to edit the transform.</p>`;
  }
}

function decode(b64, Type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}

// the point size that covers the image without gaps at the current zoom and object scale
export function updatePointSize(state) {
  const t = state.three;
  if (!t || !state.cloud) return;
  // one sample covers `stride` image pixels; the view shows the image height on the canvas height
  const px = (1.4 * state.cloud.stride * t.renderer.domElement.clientHeight) / state.session.height;
  if (t.background) t.background.material.size = Math.max(1, px);
  if (t.object) t.object.material.size = Math.max(1, px * t.handle.scale.x);  // scaled object: bigger points
  t.requestRender();
}

// the lifted point cloud from the server (`/api/sessions`), the object on the gizmo's handle
export function buildCloud(state, cloud) {
  state.cloud = cloud;
  const t = state.three;
  if (!t) return;
  for (const key of ['background', 'object']) {
    if (t[key]) { t[key].parent.remove(t[key]); t[key].geometry.dispose(); t[key].material.dispose(); t[key] = null; }
  }
  const pos = decode(cloud.positions, Float32Array);
  const col = decode(cloud.colors, Uint8Array);
  const obj = decode(cloud.object, Uint8Array);
  const pivot = cloud.pivot || [0, 0, 0];
  const bg = [], bgc = [], ob = [], obc = [];
  for (let i = 0; i < cloud.count; i++) {
    const r = col[3 * i] / 255, g = col[3 * i + 1] / 255, b = col[3 * i + 2] / 255;
    if (obj[i]) {
      ob.push(pos[3 * i] - pivot[0], pos[3 * i + 1] - pivot[1], pos[3 * i + 2] - pivot[2]);
      obc.push(0.6 * r + 0.4, 0.6 * g + 0.34, 0.6 * b + 0.05);  // highlighted: tinted yellow
    } else {
      bg.push(pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]);
      bgc.push(r, g, b);
    }
  }
  const make = (p, c) => {
    const geo = new THREE.BufferGeometry();
    geo.setAttribute('position', new THREE.Float32BufferAttribute(p, 3));
    geo.setAttribute('color', new THREE.Float32BufferAttribute(c, 3));
    return new THREE.Points(geo, new THREE.PointsMaterial({ size: 2, vertexColors: true, sizeAttenuation: false }));
  };
  t.background = make(bg, bgc);
  t.scene.add(t.background);
  t.handle.position.set(...pivot);
  t.handle.quaternion.identity();
  t.handle.scale.setScalar(1);
  if (ob.length) {
    t.object = make(ob, obc);
    t.handle.add(t.object);
    t.gizmo.attach(t.handle);
  } else {
    t.gizmo.detach();
  }
  // start at the image's own camera: the cloud looks like the photo; orbit about the object
  t.camera.fov = cloud.vertical_fov_deg;
  t.camera.position.set(0, 0, 0.001);
  t.camera.updateProjectionMatrix();
  t.orbit.target.set(0, 0, cloud.pivot ? cloud.pivot[2] : -5);  // on the optical axis, at the object's depth
  t.orbit.update();
  if (state.editMode === 'camera') applyModeToView(state);
  updatePointSize(state);
}

// in camera mode the gizmo moves a camera marker at the image's camera, seen from behind it
export function applyModeToView(state) {
  const t = state.three;
  if (!t) return;
  const camera = state.editMode === 'camera';
  t.rig.visible = camera;
  if (camera) {
    t.gizmo.attach(t.rig);
    if (t.gizmo.mode === 'scale') t.gizmo.setMode('translate');
    const d = state.cloud && state.cloud.pivot ? -state.cloud.pivot[2] : 5;
    t.camera.position.set(0.35 * d, 0.3 * d, 0.7 * d);
    t.orbit.target.set(0, 0, -0.4 * d);
  } else {
    if (t.object) t.gizmo.attach(t.handle); else t.gizmo.detach();
    t.camera.position.set(0, 0, 0.001);
    t.orbit.target.set(0, 0, state.cloud && state.cloud.pivot ? state.cloud.pivot[2] : -5);
  }
  t.orbit.update();
  t.requestRender();
}
