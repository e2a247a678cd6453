// The Diffusion Handles page: open an image, pick the object, move it with a 3D gizmo on the
// lifted point cloud (or the depth bar, the arrow keys, the fields), watch the instant preview,
// render with a live progress bar. The page's state lives in one store (store.js); every answer
// from the server is dropped unless it still belongs to what is on screen. Every request
// failure is shown in the page, next to what caused it; nothing fails silently.
import { editFromPose, poseFromEdit, uniformScale } from './convert.js';
import { DepthPad, imageFrame, minTz } from './depth.js';
import { Drafts, PAUSE_MS, movesNothing } from './drafts.js';
import { LivePreview } from './live.js';
import { renderObjectList } from './modes.js';
import { installProbe } from './probe.js';
import { ResultPanel } from './results.js';
import { Store } from './store.js';
import { applyModeToView, buildCloud, gizmoScreen, initThree, setDragging, updateAxes, updatePointSize } from './view3d.js';

const $ = (id) => document.getElementById(id);
const store = new Store();
// what the browser tests and benchmarks/web_drag.py read: counters, the 3D view, the live drawing
const ui = { previewCount: 0, previewRequests: 0, previewBusy: false, lastJob: null, three: null, lastScale: 1, draftLog: [] };
for (const key of ['session', 'cloud', 'info', 'job', 'jobsDone', 'editMode', 'frame']) {
  Object.defineProperty(ui, key, { get: () => store[key] });
}
ui.store = store;
ui.editBody = () => editBody();
ui.gizmoScreen = () => gizmoScreen(ui.three);
window.__handles = ui;
// the moved object drawn in the page while dragging; the server's exact preview when the drag pauses
const live = new LivePreview($('splat-canvas'), () => requestPreview());
ui.live = live;
installProbe(ui);
const results = new ResultPanel(store);

// ---------------------------------------------------------------- errors and requests
function showError(msg) {
  $('error-text').textContent = msg;
  $('error').hidden = false;
}
function clearError() { $('error').hidden = true; $('error-text').textContent = ''; }
$('error-close').addEventListener('click', clearError);
window.addEventListener('unhandledrejection', (e) => showError(`unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));
function showNear(id, msg) {  // an error next to the control that caused it (or none)
  $(id).textContent = msg || '';
  $(id).hidden = !msg;
}

async function api(path, opts = {}) {
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    throw new Error(`network error (${path}): ${e.message}; is the server running?`);
  }
  const type = res.headers.get('content-type') || '';
  const body = type.includes('application/json') ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    const detail = body && body.detail ? body.detail : `${res.status} ${res.statusText}`;
    const err = new Error(`${detail} (HTTP ${res.status})`);
    err.status = res.status;
    throw err;
  }
  return body;
}
const postJSON = (path, data) => api(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(data) });

// ---------------------------------------------------------------- drafts (drafts.js)
/** The draft's request for the current edit, or null when there is nothing to render. */
function draftRequest() {
  const s = store.session;
  if (!s || (s.selected === null && store.editMode !== 'camera') || !store.cloud) return null;
  const body = { session_id: s.id, ...editBody(), ...jobOptions(), ...restyleOptions(), preset: 'draft' };  // num_steps: the full render's
  return movesNothing(body) && !body.restyle ? null : body;
}
const currentDraftKey = () => { const b = draftRequest(); return b ? store.editKey(b) : null; };
const drafts = new Drafts(store, { api, postJSON, request: draftRequest, log: ui.draftLog,
  onChange: () => results.showDraft(currentDraftKey()) });
ui.drafts = drafts;
ui.draftKey = currentDraftKey;  // the key a draft of the current edit has
ui.draftPauseMs = PAUSE_MS;
$('auto-draft').addEventListener('click', () => {
  store.autoDraft = !store.autoDraft;
  $('auto-draft').setAttribute('aria-pressed', String(store.autoDraft));
  if (store.autoDraft) { drafts.setStatus(''); drafts.start(performance.now()); } else { drafts.stop('auto draft is off'); drafts.setStatus('auto draft off: Render when ready'); }
});

// ---------------------------------------------------------------- transform <-> fields <-> gizmo
const FIELDS = ['tx', 'ty', 'tz', 'ax', 'ay', 'az', 'deg', 'scale'];
function num(id) {
  const v = Number($(id).value);
  return $(id).value.trim() !== '' && Number.isFinite(v) ? v : NaN;
}
function editFromFields() {
  return {
    translate: [num('tx'), num('ty'), num('tz')],
    rotate_axis: [num('ax'), num('ay'), num('az')],
    rotate_deg: num('deg'),
    scale: num('scale'),
  };
}
const round = (v, k = 4) => Number(v.toFixed(k)) || 0;  // no -0
function setFields(e) {
  [$('tx').value, $('ty').value, $('tz').value] = e.translate.map((v) => round(v));
  [$('ax').value, $('ay').value, $('az').value] = e.rotate_axis.map((v) => round(v, 3));
  $('deg').value = round(e.rotate_deg, 2);
  $('scale').value = round(e.scale);
  $('depth-pad').setAttribute('aria-valuenow', String(round(e.translate[2], 3)));
}
const current = () => store.edits[store.editMode];
/** The edit of the current mode changes: the store, the fields and the gizmo follow. */
function setEdit(e) {
  store.edits[store.editMode] = e;
  setFields(e);
  applyEditToGizmo(e);
}
function pointSize() {
  if (store.session) updatePointSize(ui.three, store.cloud, store.session.height, ui.three ? ui.three.handle.scale.x : 1);
}
function applyEditToGizmo(e) {
  const t = ui.three;
  if (!t) return;
  if (store.editMode === 'camera') {
    const p = poseFromEdit([0, 0, 0], { ...e, scale: 1 });
    t.rig.position.set(...p.position);
    t.rig.quaternion.set(...p.quaternion);
    t.requestRender();
    return;
  }
  if (!store.cloud || !store.cloud.pivot) return;
  const p = poseFromEdit(store.cloud.pivot, e);
  t.handle.position.set(...p.position);
  t.handle.quaternion.set(...p.quaternion);
  t.handle.scale.setScalar(p.scale);
  ui.lastScale = p.scale;
  pointSize();
}
/** The pose that the live drawing uses: the gizmo's object in the photo's camera axes (three.js). */
function liveChange() {
  const t = ui.three, o = store.editMode === 'camera' ? t.rig : t.handle;
  o.updateMatrix();
  live.change(o.matrix.elements, store.editMode === 'camera' ? 1 : o.scale.x);
}
function limits() {
  const f = store.frame;
  if (!f || !store.cloud) return null;
  const camera = store.editMode === 'camera';
  return { z0: f.z0, fovDeg: store.cloud.vertical_fov_deg, minTz: camera ? -3 * f.z0 : minTz(f, current().scale),
    maxTz: camera ? 0.9 * f.z0 : 10 * f.z0 };
}
// Shift held during a gizmo drag: a tenth of the move, turn and scale from where the drag began
// (TransformControls recomputes the pose from the drag's start at each move, so nothing builds up)
let shiftHeld = false, dragStart = null;
for (const type of ['keydown', 'keyup']) window.addEventListener(type, (e) => { shiftHeld = e.shiftKey; });
function onGizmoDragging(on) {
  const o = ui.three && ui.three.gizmo.object;
  dragStart = on && o ? { position: o.position.clone(), quaternion: o.quaternion.clone(), scale: o.scale.x } : null;
  live.setDragging(on);
}
function fineMove(o) {
  if (!shiftHeld || !dragStart) return;
  o.position.lerpVectors(dragStart.position, o.position, 0.1);
  o.quaternion.slerpQuaternions(dragStart.quaternion, o.quaternion.clone(), 0.1);
}
function onGizmoChange() {
  const t = ui.three;
  fineMove(t.gizmo.object);
  if (store.editMode === 'camera') {  // the camera's own move: no live drawing, the exact preview on pause
    const r = t.rig;
    store.edits.camera = editFromPose([0, 0, 0], r.position.toArray(), r.quaternion.toArray(), 1, current().rotate_axis);
    setFields(store.edits.camera);
    liveChange();
    drafts.changed();
    return;
  }
  if (t.gizmo.mode === 'scale') {
    let s = uniformScale(t.handle.scale.x, t.handle.scale.y, t.handle.scale.z, ui.lastScale);
    if (shiftHeld && dragStart) s = dragStart.scale * (s / dragStart.scale) ** 0.1;
    t.handle.scale.setScalar(s);
    ui.lastScale = s;
    pointSize();
  }
  const h = t.handle, pivot = store.cloud.pivot;
  const e = editFromPose(pivot, h.position.toArray(), h.quaternion.toArray(), h.scale.x, current().rotate_axis);
  const lim = limits();
  if (lim && e.translate[2] < lim.minTz) {  // keep the object in front of the camera
    e.translate[2] = lim.minTz;
    h.position.z = pivot[2] - lim.minTz;
  }
  store.edits.object = e;
  setFields(e);
  liveChange();  // drawn in the page now, exact preview when the drag pauses
  drafts.changed();  // a draft render when the drag pauses long enough
}
for (const id of FIELDS) {
  $(id).addEventListener('input', () => {
    const e = editFromFields();
    if ([...e.translate, ...e.rotate_axis, e.rotate_deg, e.scale].some((v) => !Number.isFinite(v))) {
      showNear('transform-error', 'fill every transform field with a number');
      return;
    }
    store.edits[store.editMode] = e;
    applyEditToGizmo(e);
    requestPreview();
    drafts.changed();
  });
}
for (const mode of ['translate', 'rotate', 'scale']) {
  $(`mode-${mode}`).addEventListener('click', () => {
    if (ui.three) { ui.three.gizmo.setMode(mode); updateAxes(ui.three); ui.three.requestRender(); }
    for (const m of ['translate', 'rotate', 'scale']) $(`mode-${m}`).setAttribute('aria-pressed', String(m === mode));
  });
}
for (const space of ['world', 'camera']) {
  $(`axes-${space}`).addEventListener('click', () => {
    for (const s of ['world', 'camera']) $(`axes-${s}`).setAttribute('aria-pressed', String(s === space));
    if (ui.three) { ui.three.gizmo.setSpace(space === 'world' ? 'world' : 'local'); updateAxes(ui.three); ui.three.requestRender(); }
    const e = current();
    if (e.rotate_deg === 0) setEdit({ ...e, rotate_axis: space === 'world' ? store.identity().rotate_axis : [0, 1, 0] });
  });
}
$('reset-transform').addEventListener('click', () => {
  setEdit({ ...store.identity(), rotate_axis: $('axes-camera').getAttribute('aria-pressed') === 'true' ? [0, 1, 0] : store.identity().rotate_axis });
  showNear('transform-error', '');
  requestPreview();
  drafts.changed();
});
// the 3D view's keys: arrows move in the image plane, Page Up / Page Down in depth; Shift: fine
function onViewKey(ev) {
  const k = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [1, -1], ArrowDown: [1, 1], PageUp: [2, 1], PageDown: [2, -1] }[ev.key];
  const lim = limits();
  if (!k || !lim || (store.editMode === 'object' && store.session.selected === null)) return;
  ev.preventDefault();
  const e = structuredClone(current());
  e.translate[k[0]] += k[1] * 0.02 * lim.z0 * (ev.shiftKey ? 0.1 : 1);
  e.translate[2] = Math.min(lim.maxTz, Math.max(lim.minTz, e.translate[2]));
  setEdit(e);
  requestPreview();
  drafts.changed();
}
const depthPad = new DepthPad($('depth-pad'), $('view3d'), {
  get: () => current().translate[2],
  set: (tz, dragging) => {
    const e = structuredClone(current());
    e.translate[2] = tz;
    setEdit(e);
    if (dragging && ui.three) liveChange(); else requestPreview();
    drafts.changed();
  },
  limits: () => (store.session && (store.editMode === 'camera' || store.session.selected !== null) ? limits() : null),
  onDrag: (on) => { setDragging(ui.three, on); live.setDragging(on); },
});
ui.depthPad = depthPad;

// ---------------------------------------------------------------- object / camera mode, several objects
function setEditMode(mode) {
  if (mode === store.editMode) return;
  store.editMode = mode;
  const camera = mode === 'camera';
  for (const m of ['object', 'camera']) $(`edit-${m}`).setAttribute('aria-pressed', String(m === mode));
  $('mode-scale').disabled = camera;
  $('scale').disabled = camera;
  if (camera && $('mode-scale').getAttribute('aria-pressed') === 'true') $('mode-translate').click();  // a camera does not scale
  $('objects-box').hidden = camera;
  $('mode-note').textContent = camera
    ? 'Camera mode: the gizmo moves the camera (the orange marker); the whole scene is seen from the moved viewpoint, uncovered regions are generated. No object needed. The preview is computed when the drag pauses.'
    : 'Drag the gizmo in the 3D view, the depth bar beside it (up = farther, Shift = fine), or type. Fields in camera axes: x right, y down, z forward.';
  live.setEnabled(!camera);
  applyModeToView(ui.three, mode, store.cloud);
  setEdit(store.edits[mode]);
  showNear('transform-error', '');
  updateButtons();
  requestPreview();
  drafts.changed();
}
$('edit-object').addEventListener('click', () => setEditMode('object'));
$('edit-camera').addEventListener('click', () => setEditMode('camera'));
// what moves, for the preview and the render
function editBody() {
  if (store.editMode === 'camera') return { transform: structuredClone(store.edits.camera), mode: 'camera' };
  return { transform: structuredClone(store.edits.object), mode: 'object', objects: store.others() };
}
function renderObjects() {
  renderObjectList($('object-list'), store.objects, (mask) => {
    store.drop(mask);
    renderObjects();
    updateButtons();
    requestPreview();
    drafts.changed();
  });
  $('objects-note').hidden = store.objects.length === 0;
}
$('add-object').addEventListener('click', () => guarded(async () => {
  const s = store.session;
  if (!s || s.selected === null) throw new Error('add object: select an object first (step 2)');
  store.keep(s.selected, store.edits.object);
  const next = s.masks.find((m) => m.index !== s.selected && !store.has(m.index));
  if (next) {
    await selectObject(await postJSON(`/api/sessions/${s.id}/select`, { mode: 'mask', index: next.index }), true);
  } else {
    renderObjects();
    updateButtons();
    $('objects-hint').textContent = 'kept: now select another object (step 2: upload a mask or use a selection tool)';
  }
}));

// ---------------------------------------------------------------- preview (latest wins, this image only)
let previewInFlight = false, previewPending = false;
function setPreviewStatus(text, isError = false) {
  const el = $('preview-status');
  el.textContent = text;
  el.classList.toggle('error', isError);
  el.classList.toggle('muted', !isError);
}
function showPreviewImage(src) {
  const img = $('preview-img');
  if (src) { img.src = src; img.hidden = false; } else { img.removeAttribute('src'); img.hidden = true; }
}
async function requestPreview() {
  const s = store.session;
  if (!s || (s.selected === null && store.editMode !== 'camera')) return;
  if (previewInFlight) { previewPending = true; return; }
  previewInFlight = true;
  previewPending = false;
  ui.previewBusy = true;
  ui.previewRequests += 1;
  const t0 = performance.now();
  const seq = live.seq;  // the gizmo change this preview shows
  const ticket = store.ticket(), body = editBody(), mode = store.editMode;
  try {
    const r = await postJSON(`/api/sessions/${s.id}/preview`, body);
    if (store.current(ticket)) {
      showPreviewImage(r.image);
      live.exactShown(seq);
      ui.previewCount += 1;
      $('preview-img').dataset.count = String(ui.previewCount);
      showNear('transform-error', '');
      const what = mode === 'camera' ? 'camera move' : `${1 + body.objects.length} object(s)`;
      setPreviewStatus(`preview (${what}) ${Math.round(performance.now() - t0)} ms (server ${Math.round(r.timings_ms.server_total)} ms) · ${r.object_pixels} ${mode === 'camera' ? 'scene' : 'object'} px · ${r.hole_pixels} hole px (magenta)`);
    }
  } catch (e) {
    if (store.current(ticket)) {
      setPreviewStatus(`preview: ${e.message}`, true);
      showNear('transform-error', e.message);
    }
  } finally {
    previewInFlight = false;
    if (previewPending) requestPreview();
    else ui.previewBusy = false;
  }
}

// ---------------------------------------------------------------- images and objects
function fillMaskSelect(info) {
  const sel = $('mask-select');
  sel.innerHTML = '';
  if (!info.masks.length) sel.add(new Option('(no object yet: upload a mask or select one)', ''));
  for (const m of info.masks) sel.add(new Option(`${m.name} (${m.pixels} px)`, String(m.index)));
  if (info.selected !== null) sel.value = String(info.selected);
}
/** The lifted cloud of the current selection into the 3D view and the live drawing; false if outdated. */
async function loadCloud(info, ticket, keepAxis) {
  const cloud = await api(info.points_url);
  if (!store.current(ticket)) return false;
  const frame = imageFrame(cloud);
  if (keepAxis && store.frame) Object.assign(frame, { axis: store.frame.axis, up3: store.frame.up3, floor: store.frame.floor });
  store.cloud = cloud;
  store.frame = frame;
  buildCloud(ui.three, cloud, frame.up3);
  applyModeToView(ui.three, store.editMode, cloud);
  await live.setScene(info, cloud);
  return store.current(ticket);
}
/** A new image (scene or upload): nothing of the last one stays on screen or in a request. */
async function openSession(info, name) {
  drafts.stop('another image was opened');
  drafts.setStatus('');
  store.openSession(info, name);
  const ticket = store.ticket();
  $('input-img').src = info.image_url;
  $('input-img').hidden = false;
  $('input-empty').hidden = true;
  showPreviewImage(null);
  live.hide();
  setPreviewStatus('loading the image…');
  $('prompt').value = info.prompt;
  $('objects-hint').textContent = '';
  showNear('transform-error', '');
  showNear('job-error', '');
  fillMaskSelect(info);
  renderObjects();
  results.show();
  layoutImages();
  updateButtons();
  if (!(await loadCloud(info, ticket, false))) return;
  store.edits = { object: store.identity(), camera: store.identity() };
  setEdit(current());
  updateButtons();
  if (info.selected !== null || store.editMode === 'camera') {
    showPreviewImage(info.image_url);
    await requestPreview();
  } else {
    setPreviewStatus('select the object to edit (step 2)');
  }
}
/** Another object of the open image: the last one keeps its move in the list. */
async function selectObject(info, keep = false) {
  drafts.stop('another object was selected');
  const e = store.selectObject(info, store.edits.object, keep);
  const ticket = store.ticket();
  fillMaskSelect(info);
  renderObjects();
  $('objects-hint').textContent = '';
  showNear('transform-error', '');
  if (!(await loadCloud(info, ticket, true))) return;
  if (store.editMode === 'object') setEdit(e); else applyModeToView(ui.three, 'camera', store.cloud);
  updateButtons();
  if (info.selected !== null) showPreviewImage(info.image_url);
  results.showDraft(currentDraftKey());
  await requestPreview();
}
function loadSession(info, name) {
  return store.session && store.session.id === info.id ? selectObject(info) : openSession(info, name);
}
async function guarded(fn, button = null, status = null) {
  clearError();
  if (button) button.disabled = true;
  if (status) setPreviewStatus(status);
  try {
    await fn();
  } catch (e) {
    showError(e.message);
    if (status) setPreviewStatus(`failed: ${e.message}`, true);
  } finally {
    if (button) button.disabled = false;
  }
}
$('scene-open').addEventListener('click', () => guarded(async () => {
  const id = $('scene-select').value;
  const info = await postJSON('/api/sessions/scene', { scene: id });
  await openSession(info, info.source || id);
}, $('scene-open'), 'opening the scene…'));
$('upload-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    const fd = new FormData();
    const img = $('upload-image').files[0];
    if (!img) throw new Error('image: choose an image file to upload');
    fd.append('image', img);
    if ($('upload-depth').files[0]) fd.append('depth', $('upload-depth').files[0]);
    if ($('upload-mask').files[0]) fd.append('mask', $('upload-mask').files[0]);
    fd.append('prompt', $('upload-prompt').value);  // the new image's own caption, never the last image's
    fd.append('fov_deg', $('upload-fov').value || '55');
    const info = await api('/api/sessions', { method: 'POST', body: fd });
    const sel = $('scene-select');
    for (const o of [...sel.options]) if (o.value === '__upload') o.remove();
    const opt = new Option(`uploaded: ${img.name}`, '__upload');
    opt.disabled = true;
    sel.add(opt);
    sel.value = '__upload';
    await openSession(info, img.name.replace(/\.[^.]*$/, ''));
  }, $('upload-submit'), 'uploading…');
});
$('mask-select').addEventListener('change', () => guarded(async () => {
  if (!store.session || $('mask-select').value === '') return;
  await selectObject(await postJSON(`/api/sessions/${store.session.id}/select`, { mode: 'mask', index: Number($('mask-select').value) }));
}));
$('mask-file').addEventListener('change', () => guarded(async () => {
  const f = $('mask-file').files[0];
  if (!f) return;
  if (!store.session) throw new Error('mask: open an image first (step 1)');
  const fd = new FormData();
  fd.append('mask', f);
  $('mask-file').value = '';
  await selectObject(await api(`/api/sessions/${store.session.id}/mask`, { method: 'POST', body: fd }));
}));
$('click-toggle').addEventListener('change', () => $('input-img').classList.toggle('clickable', $('click-toggle').checked));
$('input-img').addEventListener('click', (ev) => {
  const s = store.session;
  if (!$('click-toggle').checked || !s) return;
  const r = ev.target.getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * s.width;
  const y = ((ev.clientY - r.top) / r.height) * s.height;
  guarded(async () => {
    await selectObject(await postJSON(`/api/sessions/${s.id}/select`, { mode: 'click', x, y }));
  }, null, 'segmenting the clicked object…');
});
$('text-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    if (!store.session) throw new Error('text selection: open an image first (step 1)');
    await selectObject(await postJSON(`/api/sessions/${store.session.id}/select`, { mode: 'text', query: $('text-query').value }));
  }, null, 'finding the object…');
});

// the input, preview and result boxes: one size, the image's aspect, as large as the screen allows
function layoutImages() {
  const s = store.session, panels = document.querySelector('.panels');
  if (!s) { panels.style.removeProperty('--img-w'); panels.style.removeProperty('--img-h'); return; }
  const col = $('input-img').closest('.panel').clientWidth;
  const wide = window.matchMedia('(min-width: 1000px) and (min-height: 600px)').matches;
  const stage = $('stage');
  const top = panels.getBoundingClientRect().top + (wide ? stage.scrollTop : window.scrollY);
  const maxH = wide ? Math.max(140, window.innerHeight - top - 34) : 0.7 * window.innerHeight;
  let w = col, h = (col * s.height) / s.width;
  if (h > maxH) { h = maxH; w = (h * s.width) / s.height; }
  panels.style.setProperty('--img-w', `${Math.floor(w)}px`);
  panels.style.setProperty('--img-h', `${Math.floor((Math.floor(w) * s.height) / s.width)}px`);
  results.fit();
}
new ResizeObserver(() => layoutImages()).observe(document.querySelector('.panels'));
window.addEventListener('resize', () => layoutImages());

// ---------------------------------------------------------------- jobs: render, removal, animation
function updateButtons() {
  const why = store.info && store.info.render_unavailable;
  const camera = store.editMode === 'camera';
  const s = store.session;
  const selected = Boolean(s) && s.selected !== null;
  const ready = camera ? Boolean(s) && Boolean(store.cloud) : selected && Boolean(store.cloud);
  const busy = Boolean(why) || Boolean(store.job);
  const others = camera || !s ? 0 : store.others().length;
  $('render-btn').disabled = busy || !ready;
  $('render-btn').textContent = camera ? 'Render camera move' : (others ? `Render ${others + 1} objects` : 'Render');
  $('remove-btn').disabled = busy || !selected || camera;
  $('animate-btn').disabled = busy || !ready;
  $('cancel-btn').disabled = !store.job;
  $('animate-note').textContent = camera ? 'the camera from the image\'s viewpoint to the moved one, from the same inversion'
    : (others ? `the ${others + 1} objects from their places to their transforms, from the same inversion`
      : 'the object from its place to the transform, from the same inversion');
  $('add-object').disabled = !selected || camera;
  const oneObject = !camera && !others;  // a restyle changes one object's look
  $('restyle').disabled = !oneObject;
  $('restyle-words').disabled = !oneObject;
  $('restyle-note').textContent = oneObject || !$('restyle').value.trim() ? ''
    : `New look: one object at a time, not used ${camera ? 'in camera mode' : `with ${others + 1} objects`}`;
  $('render-note').textContent = why ? `Rendering unavailable: ${why}` : (ready || !s ? '' : (camera ? 'loading…' : 'select an object first (step 2)'));
  $('render-note').classList.toggle('error', Boolean(why));
}
function setProgress(frac, text, failed = false) {
  const pct = Math.round(100 * Math.max(0, Math.min(1, frac)));
  $('progress-fill').style.width = `${pct}%`;
  $('progress').setAttribute('aria-valuenow', String(pct));
  $('progress').setAttribute('aria-valuetext', `${pct}%: ${text}`);
  $('progress').classList.toggle('failed', failed);
  $('progress-text').textContent = text;
}
const KIND_WORD = { render: 'render', remove: 'removal', animate: 'animation' };
function describe(st) {
  if (st.state === 'queued') return st.queue_position > 0 ? `queued (${st.queue_position} ahead)` : 'queued';
  if (st.state === 'done') return `done · ${st.info && st.info.reused_inversion ? 'inversion reused from cache' : 'inverted and edited'}`;
  if (st.state === 'error') return `failed: ${st.error}`;
  if (st.state === 'cancelled') return `cancelled${st.message ? ` (${st.message})` : ''}`;
  if (st.cancel_requested) return `cancelling… ${st.message || st.stage}`;
  if (st.message) return st.message;  // e.g. "null-text 3/50, 12 s elapsed, about 40 s left"
  return st.steps ? `${st.stage}: step ${st.step} of ${st.steps}` : st.stage;
}
function onJobUpdate(st) {
  const job = store.job;
  if (!job || job.id !== st.id) return true;  // a job this page no longer follows
  const ended = st.state !== 'queued' && st.state !== 'running';
  const word = KIND_WORD[job.kind];
  setProgress(st.state === 'done' ? 1 : st.fraction, `${word}: ${describe(st)}`, st.state === 'error');
  if (!ended) return false;
  const result = store.finishJob(st.state === 'done' ? st : null);
  if (st.state === 'done' && !result) setProgress(1, `${word} done, for an image no longer open (not shown)`);
  if (st.state === 'error') { showError(`${job.kind}: ${st.error}`); showNear('job-error', `${word} failed: ${st.error}`); }
  if (st.state === 'cancelled') setProgress(0, `${word}: ${describe(st)}`);
  if (!store.draft) drafts.setStatus('');  // "draft cancelled: a render was asked" is over
  if (result) results.show();
  updateButtons();
  return true;
}
function watchJob(id) {
  const es = new EventSource(`/api/jobs/${id}/events`);
  let ended = false;
  es.onmessage = (m) => { if (onJobUpdate(JSON.parse(m.data))) { ended = true; es.close(); } };
  es.onerror = () => { es.close(); if (!ended) pollJob(id); };
}
async function pollJob(id) {
  try {
    while (true) {
      const st = await api(`/api/jobs/${id}`);
      if (onJobUpdate(st)) return;
      await new Promise((r) => setTimeout(r, 500));
    }
  } catch (e) {
    const job = store.job;
    if (!job || job.id !== id) return;
    store.finishJob(null);
    updateButtons();
    setProgress(0, `failed: ${e.message}`, true);
    showError(`${job.kind}: ${e.message}`);
    showNear('job-error', e.message);
  }
}
/** The object's new look (restyle) for a render of one object: `{restyle, restyle_words}`, or nothing. */
function restyleOptions() {
  const text = $('restyle').value.trim(), words = $('restyle-words').value.trim();
  if (!text || $('restyle').disabled) return {};
  return words ? { restyle: text, restyle_words: words } : { restyle: text };
}
for (const id of ['restyle', 'restyle-words']) $(id).addEventListener('input', () => drafts.changed());
function jobOptions() {
  const steps = $('steps').value.trim();
  const o = { prompt: $('prompt').value, seed: Number($('seed').value || 0) };
  if (steps) o.num_steps = Number(steps);
  return o;
}
async function submitJob(path, body, kind) {
  drafts.stop(`a ${KIND_WORD[kind]} was asked`);  // the full job gets the worker
  showNear('job-error', '');
  setProgress(0, `${KIND_WORD[kind]}: submitting…`);
  const s = store.session, mask = s && s.masks.find((m) => m.index === s.selected);
  try {
    const st = await postJSON(path, body);
    store.startJob(st.id, kind, body, mask ? mask.name : null);
    ui.lastJob = st.id;
    updateButtons();
    onJobUpdate(st);
    watchJob(st.id);
  } catch (e) {
    setProgress(0, `failed: ${e.message}`, true);
    showNear('job-error', e.message);
    throw e;
  }
}
$('render-btn').addEventListener('click', () => guarded(async () => {
  await submitJob('/api/jobs', { session_id: store.session.id, ...editBody(), ...jobOptions(), ...restyleOptions() }, 'render');
}));
$('remove-btn').addEventListener('click', () => guarded(async () => {
  await submitJob(`/api/sessions/${store.session.id}/remove`, jobOptions(), 'remove');
}));
$('animate-btn').addEventListener('click', () => guarded(async () => {
  const body = { ...editBody(), frames: Number($('anim-frames').value), ...jobOptions() };  // what a render moves
  await submitJob(`/api/sessions/${store.session.id}/animate`, body, 'animate');
}));
$('cancel-btn').addEventListener('click', () => guarded(async () => {
  const job = store.job;
  if (!job) return;
  $('cancel-btn').disabled = true;
  try {
    onJobUpdate(await api(`/api/jobs/${job.id}/cancel`, { method: 'POST' }));  // queued: cancelled at once
  } catch (e) {
    const msg = `cancel: ${e.message}`;
    showNear('job-error', msg);
    throw new Error(msg);
  }
}));

// ---------------------------------------------------------------- start
async function start() {
  ui.three = await initThree($('view3d'), { onGizmoChange, onDragging: onGizmoDragging });
  if (ui.three) {
    ui.three.onResize = pointSize;
    ui.three.renderer.domElement.addEventListener('keydown', onViewKey);
  }
  try {
    store.info = await api('/api/info');
  } catch (e) {
    showError(`could not reach the server: ${e.message}`);
    $('server-info').textContent = 'offline';
    return;
  }
  const i = store.info;
  $('server-info').textContent = `v${i.version} · model ${i.model}${i.render_unavailable ? ' (render unavailable)' : ''} · uploads ≤ ${i.limits.max_upload_mb} MB`;
  for (const sc of i.scenes) $('scene-select').add(new Option(sc.title, sc.id));
  $('anim-frames').max = String(i.limits.max_animation_frames);
  $('click-mode').hidden = !i.selection_modes.includes('click');
  $('text-form').hidden = !i.selection_modes.includes('text');
  updateButtons();
  document.body.dataset.ready = '1';
}
start();
