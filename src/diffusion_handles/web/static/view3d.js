// The 3D view of the page: the lifted point cloud (three.js), the gizmo on the object (or on a
// camera marker in camera mode), orbit controls. The scene's world is level: `content` holds
// everything in the photo's camera axes, turned so that the world's up (the floor's normal, see
// depth.js) is three.js +y; the gizmo's "world" axes are then right / up / level forward, and its
// "local" axes the camera's. Drawn on demand (a camera, gizmo or scene change), never every
// frame, and lighter while a drag lasts (see setDragging).
import { cameraRig } from './modes.js';

let THREE = null;
const LOD_STRIDE = 4;  // one background point in four while dragging

// Starts the 3D view in `box` and returns it; `onGizmoChange()` runs as the gizmo moves,
// `onDragging(bool)` when a drag starts or ends. Without WebGL, says so in `box` and returns null.
export async function initThree(box, { onGizmoChange, onDragging }) {
  try {
    THREE = await import('./vendor/three.bundle.min.js');
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('webgl2') || canvas.getContext('webgl');
    if (!ctx) throw new Error('WebGL is not available in this browser');
    const renderer = new THREE.WebGLRenderer({ canvas, context: ctx, antialias: false, preserveDrawingBuffer: true });
    const ratio = Math.min(2, window.devicePixelRatio || 1);
    renderer.setPixelRatio(ratio);
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'application');
    canvas.setAttribute('aria-label', '3D view of the image. Arrow keys move the object (Shift: fine), Page Up / Page Down move it farther / nearer');
    box.appendChild(canvas);
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(0x0d0e11);
    const content = new THREE.Group();  // the photo's camera axes, turned level
    scene.add(content);
    const camera = new THREE.PerspectiveCamera(42, 4 / 3, 0.01, 1000);
    const orbit = new THREE.OrbitControls(camera, canvas);
    orbit.enableDamping = false;
    const handle = new THREE.Group();
    content.add(handle);
    const gizmo = new THREE.TransformControls(camera, canvas);
    gizmo.setSize(0.9);
    const rig = cameraRig(THREE);  // carries the gizmo in camera mode
    content.add(rig);
    const t = { renderer, scene, content, camera, orbit, gizmo, handle, rig, background: null, backgroundLow: null,
      object: null, dragging: false, dragKind: null, draws: 0, ratio, box, bgQuad: backgroundQuad(), bgTarget: null };
    scene.add(t.bgQuad);
    gizmo.addEventListener('dragging-changed', (e) => {
      orbit.enabled = !e.value;
      setDragging(t, e.value);
      onDragging(e.value);
    });
    gizmo.addEventListener('objectChange', onGizmoChange);
    scene.add(gizmo.getHelper());
    hideArrowAtViewer(t);
    // drawn on demand, at most once per display frame: an idle page costs nothing
    let pending = false;
    t.requestRender = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; t.draws += 1; renderer.render(scene, camera); });
    };
    // an orbit is a drag once the view moves (a press on the gizmo starts the orbit controls too)
    let orbiting = false;
    orbit.addEventListener('start', () => { orbiting = true; });
    orbit.addEventListener('end', () => { orbiting = false; if (t.dragKind === 'orbit') setDragging(t, false); });
    orbit.addEventListener('change', () => {
      if (orbiting && !gizmo.dragging) setDragging(t, true, 'orbit');
      updateAxes(t);
      t.requestRender();
    });
    gizmo.addEventListener('change', t.requestRender);
    const resize = () => {
      const w = box.clientWidth, h = box.clientHeight;
      if (!w || !h) return;
      renderer.setSize(w, h, false);
      canvas.style.width = '100%';
      canvas.style.height = '100%';
      camera.aspect = w / h;
      camera.updateProjectionMatrix();
      t.onResize && t.onResize();
      if (t.dragKind === 'gizmo' && t.background) snapshotBackground(t);
      t.requestRender();
    };
    new ResizeObserver(resize).observe(box);
    resize();
    return t;
  } catch (e) {
    box.innerHTML = '';
    const p = document.createElement('p');
    p.className = 'error';
    p.style.padding = '1em';
    p.textContent = `3D view unavailable: ${e.message}. Use the number fields to edit the transform.`;
    box.appendChild(p);
    return null;
  }
}

// a drag starts or ends: half the resolution while it lasts. While the gizmo (or the depth pad)
// drags, the camera stands still, so the background is drawn once into a texture (colour and
// depth) and each frame draws that texture, then the moved object and the gizmo; while the view
// orbits, a quarter of the background points. After a drag, full detail again.
export function setDragging(t, on, kind = 'gizmo') {
  if (!t) return;
  const want = on ? kind : null;
  if (t.dragKind === want || (want === 'orbit' && t.dragKind === 'gizmo')) return;
  t.dragKind = want;
  t.dragging = on;
  const ratio = want ? t.ratio / 2 : t.ratio;  // half the resolution while dragging
  if (t.renderer.getPixelRatio() !== ratio) {
    t.renderer.setPixelRatio(ratio);
    t.renderer.setSize(t.box.clientWidth, t.box.clientHeight, false);
    t.onResize && t.onResize();
  }
  if (t.background) {
    t.background.visible = !want;
    t.backgroundLow.visible = want === 'orbit';
    if (want === 'gizmo') snapshotBackground(t);
    t.bgQuad.visible = want === 'gizmo';
  }
  t.requestRender();
}

function backgroundQuad() {
  const m = new THREE.ShaderMaterial({
    uniforms: { tColor: { value: null }, tDepth: { value: null } },
    vertexShader: 'varying vec2 vUv; void main() { vUv = uv; gl_Position = vec4(position.xy, 0.0, 1.0); }',
    fragmentShader: `uniform sampler2D tColor; uniform sampler2D tDepth; varying vec2 vUv;
      void main() { gl_FragColor = texture2D(tColor, vUv); gl_FragDepth = texture2D(tDepth, vUv).x;
      #include <colorspace_fragment>
      }`,
    depthTest: true, depthWrite: true, depthFunc: THREE.AlwaysDepth,
  });
  const quad = new THREE.Mesh(new THREE.PlaneGeometry(2, 2), m);
  quad.frustumCulled = false;
  quad.renderOrder = -1;  // first: the object and the gizmo are drawn over it, tested against its depth
  quad.visible = false;
  return quad;
}

// the background as the camera sees it now, colour and depth, into `t.bgTarget`
function snapshotBackground(t) {
  const r = t.renderer, size = r.getDrawingBufferSize(new THREE.Vector2());
  if (!t.bgTarget || t.bgTarget.width !== size.x || t.bgTarget.height !== size.y) {
    if (t.bgTarget) t.bgTarget.dispose();
    t.bgTarget = new THREE.WebGLRenderTarget(size.x, size.y, { depthTexture: new THREE.DepthTexture(size.x, size.y) });
    t.bgTarget.texture.colorSpace = THREE.SRGBColorSpace;
  }
  const helper = t.gizmo.getHelper(), shown = [t.handle.visible, helper.visible, t.rig.visible];
  t.handle.visible = helper.visible = t.rig.visible = t.bgQuad.visible = false;
  t.background.visible = true;
  r.setRenderTarget(t.bgTarget);
  r.render(t.scene, t.camera);
  r.setRenderTarget(null);
  [t.handle.visible, helper.visible, t.rig.visible] = shown;
  t.background.visible = false;
  t.bgQuad.material.uniforms.tColor.value = t.bgTarget.texture;
  t.bgQuad.material.uniforms.tDepth.value = t.bgTarget.depthTexture;
  fitQuad(t, size);
}

// the quad covers only the background's rectangle on screen (the rest is the clear colour):
// from the photo's viewpoint that is the image's own rectangle, often half the view or less
function fitQuad(t, size) {
  const pts = t.background.geometry.attributes.position, v = new THREE.Vector3();
  let x0 = 1, y0 = 1, x1 = -1, y1 = -1, behind = false;
  t.content.updateMatrixWorld(true);
  t.camera.updateMatrixWorld(true);
  const step = Math.max(1, Math.floor(pts.count / 4000));  // a sample of the points is enough
  for (let i = 0; i < pts.count; i += step) {
    v.fromBufferAttribute(pts, i).applyMatrix4(t.content.matrixWorld).applyMatrix4(t.camera.matrixWorldInverse);
    if (v.z > -t.camera.near) { behind = true; break; }
    v.applyMatrix4(t.camera.projectionMatrix);
    x0 = Math.min(x0, v.x); x1 = Math.max(x1, v.x); y0 = Math.min(y0, v.y); y1 = Math.max(y1, v.y);
  }
  const mx = (2 * 8) / size.x, my = (2 * 8) / size.y;  // a margin for the points' size
  if (behind) { x0 = -1; y0 = -1; x1 = 1; y1 = 1; }
  [x0, x1] = [Math.max(-1, x0 - mx), Math.min(1, x1 + mx)];
  [y0, y1] = [Math.max(-1, y0 - my), Math.min(1, y1 + my)];
  const pos = t.bgQuad.geometry.attributes.position, uv = t.bgQuad.geometry.attributes.uv;
  [[x0, y1], [x1, y1], [x0, y0], [x1, y0]].forEach(([x, y], i) => {  // PlaneGeometry's corner order
    pos.setXY(i, x, y);
    uv.setXY(i, (x + 1) / 2, (y + 1) / 2);
  });
  pos.needsUpdate = true;
  uv.needsUpdate = true;
}

// the gizmo shows no arrow that points (nearly) at the viewer: a drag along it is ill-defined
// (the depth pad moves the object in depth instead); its centre handle still moves in the view plane
export function updateAxes(t) {
  if (!t) return;
  const dir = t.camera.getWorldDirection(new THREE.Vector3());
  const z = new THREE.Vector3(0, 0, 1);
  if (t.gizmo.space === 'local' && t.gizmo.object) z.applyQuaternion(t.gizmo.object.getWorldQuaternion(new THREE.Quaternion()));
  t.hideZArrow = t.gizmo.mode === 'translate' && Math.abs(dir.dot(z)) > 0.85;
}

// TransformControls (r187) hides an axis only within 8 degrees of the view direction, and its
// showZ flag would hide the centre handle too: hide just the Z arrow and its picker
function hideArrowAtViewer(t) {
  const g = t.gizmo._gizmo;
  if (!g || !g.gizmo || !g.picker) return;
  const update = g.updateMatrixWorld.bind(g);
  g.updateMatrixWorld = (force) => {
    update(force);
    if (!t.hideZArrow || g.mode !== 'translate') return;
    for (const group of [g.gizmo.translate, g.picker.translate]) {
      for (const c of group.children) if (c.name === 'Z') c.visible = false;
    }
  };
}

function decode(b64, Type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}

// the point size that covers the image without gaps at the current zoom and object scale
export function updatePointSize(t, cloud, imageHeight, scale) {
  if (!t || !cloud) return;
  // one sample covers `stride` image pixels; the view shows the image height on the canvas height
  const px = (1.4 * cloud.stride * t.renderer.domElement.height) / (imageHeight * t.renderer.getPixelRatio());
  if (t.background) t.background.material.size = Math.max(1, px);
  if (t.backgroundLow) t.backgroundLow.material.size = Math.max(1, 0.5 * LOD_STRIDE * px);
  if (t.object) t.object.material.size = Math.max(1, px * scale);  // scaled object: bigger points
  t.requestRender();
}

/** A point in the photo's camera axes (three.js: y up, z to the viewer) in the level world. */
export function toWorld(t, v) {
  return new THREE.Vector3(...v).applyQuaternion(t.content.quaternion);
}

// the lifted point cloud from the server, the object on the gizmo's handle; `up3` the world's up
export function buildCloud(t, cloud, up3) {
  if (!t) return;
  for (const key of ['background', 'backgroundLow', 'object']) {
    if (t[key]) { t[key].parent.remove(t[key]); t[key].geometry.dispose(); t[key].material.dispose(); t[key] = null; }
  }
  t.content.quaternion.setFromUnitVectors(new THREE.Vector3(...up3), new THREE.Vector3(0, 1, 0));
  const pos = decode(cloud.positions, Float32Array);
  const col = decode(cloud.colors, Uint8Array);
  const obj = decode(cloud.object, Uint8Array);
  const pivot = cloud.pivot || [0, 0, 0];
  const bg = [], bgc = [], low = [], lowc = [], ob = [], obc = [];
  const w = cloud.grid_width;
  for (let i = 0; i < cloud.count; i++) {
    const r = col[3 * i] / 255, g = col[3 * i + 1] / 255, b = col[3 * i + 2] / 255;
    if (obj[i]) {
      ob.push(pos[3 * i] - pivot[0], pos[3 * i + 1] - pivot[1], pos[3 * i + 2] - pivot[2]);
      obc.push(0.6 * r + 0.4, 0.6 * g + 0.34, 0.6 * b + 0.05);  // highlighted: tinted yellow
      continue;
    }
    bg.push(pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]);
    bgc.push(r, g, b);
    const row = Math.floor(i / w), c = i % w;
    if (row % 2 === 0 && c % 2 === 0) { low.push(pos[3 * i], pos[3 * i + 1], pos[3 * i + 2]); lowc.push(r, g, b); }
  }
  const make = (p, c) => {
    const geo = new THREE.BufferGeometry();
    geo.setAttribute('position', new THREE.Float32BufferAttribute(p, 3));
    geo.setAttribute('color', new THREE.Float32BufferAttribute(c, 3));
    return new THREE.Points(geo, new THREE.PointsMaterial({ size: 2, vertexColors: true, sizeAttenuation: false }));
  };
  t.background = make(bg, bgc);
  t.backgroundLow = make(low, lowc);
  t.background.visible = !t.dragKind;
  t.backgroundLow.visible = t.dragKind === 'orbit';
  t.content.add(t.background, t.backgroundLow);
  t.handle.position.set(...pivot);
  t.handle.quaternion.identity();
  t.handle.scale.setScalar(1);
  if (ob.length) {
    t.object = make(ob, obc);
    t.handle.add(t.object);
  }
  t.camera.fov = cloud.vertical_fov_deg;
  t.camera.updateProjectionMatrix();
}

// where the view looks from: the photo's camera (object mode) or behind and beside it, showing
// the camera marker (camera mode); the gizmo on the object, the marker or nothing
export function applyModeToView(t, mode, cloud) {
  if (!t) return;
  const camera = mode === 'camera';
  const zc = cloud && cloud.pivot ? cloud.pivot[2] : -5;
  t.rig.visible = camera;
  if (camera) {
    t.gizmo.attach(t.rig);
    if (t.gizmo.mode === 'scale') t.gizmo.setMode('translate');
    const d = -zc;
    t.camera.position.copy(toWorld(t, [0.35 * d, 0.3 * d, 0.7 * d]));
    t.orbit.target.copy(toWorld(t, [0, 0, -0.4 * d]));
  } else {
    if (t.object) t.gizmo.attach(t.handle); else t.gizmo.detach();
    t.camera.position.copy(toWorld(t, [0, 0, 0.001]));  // the image's own camera: the cloud looks like the photo
    t.orbit.target.copy(toWorld(t, [0, 0, zc]));  // orbit about the object's depth on the optical axis
  }
  t.orbit.update();
  updateAxes(t);
  t.requestRender();
}

/** Where the gizmo's centre is on screen (client pixels); the browser tests drag it from there. */
export function gizmoScreen(t) {
  const v = (t.gizmo.object || t.handle).getWorldPosition(new THREE.Vector3()).project(t.camera);
  const r = t.renderer.domElement.getBoundingClientRect();
  return { x: r.left + ((v.x + 1) / 2) * r.width, y: r.top + ((1 - v.y) / 2) * r.height };
}
