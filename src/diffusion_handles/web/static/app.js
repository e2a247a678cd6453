// The Diffusion Handles page: open an image, pick the object, move it with a 3D gizmo on the
// lifted point cloud, watch the instant preview, render with a live progress bar.
// Every request failure is shown in the page (error box or preview status); nothing fails silently.
import { editFromPose, poseFromEdit, uniformScale } from './convert.js';
import { LivePreview } from './live.js';
import { IDENTITY, ObjectList } from './modes.js';
import { installProbe } from './probe.js';
import { applyModeToView, buildCloud, initThree, updatePointSize } from './view3d.js';

const $ = (id) => document.getElementById(id);
const state = { info: null, session: null, cloud: null, previewCount: 0, previewRequests: 0, job: null, jobKind: 'render', three: null, lastScale: 1,
  editMode: 'object', edits: { object: IDENTITY, camera: IDENTITY } };
window.__handles = state;  // read by the browser tests
// the moved object drawn in the page while dragging; the server's exact preview when the drag pauses
const live = new LivePreview(document.getElementById('splat-canvas'), () => requestPreview());
state.live = live;
installProbe(state);
// objects kept for the render besides the selected one (several objects, one render)
state.objects = new ObjectList(document.getElementById('object-list'), () => {
  $('objects-note').hidden = state.objects.items.length === 0;
  updateRenderButton();
  requestPreview();
});

// ---------------------------------------------------------------- errors and requests
function showError(msg) {
  $('error-text').textContent = msg;
  $('error').hidden = false;
}
function clearError() { $('error').hidden = true; $('error-text').textContent = ''; }
$('error-close').addEventListener('click', clearError);
window.addEventListener('unhandledrejection', (e) => showError(`unexpected error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`));

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

// ---------------------------------------------------------------- transform <-> fields <-> gizmo
const FIELDS = ['tx', 'ty', 'tz', 'ax', 'ay', 'az', 'deg', 'scale'];
function num(id) {
  const v = Number($(id).value);
  return Number.isFinite(v) ? v : NaN;
}
function editFromFields() {
  return {
    translate: [num('tx'), num('ty'), num('tz')],
    rotate_axis: [num('ax'), num('ay'), num('az')],
    rotate_deg: num('deg'),
    scale: num('scale'),
  };
}
const round = (v, k = 4) => Number(v.toFixed(k));
function setFields(e) {
  [$('tx').value, $('ty').value, $('tz').value] = e.translate.map((v) => round(v));
  [$('ax').value, $('ay').value, $('az').value] = e.rotate_axis.map((v) => round(v));
  $('deg').value = round(e.rotate_deg, 2);
  $('scale').value = round(e.scale);
}
function applyEditToGizmo(e) {
  const t = state.three;
  if (t && state.editMode === 'camera') {
    const p = poseFromEdit([0, 0, 0], { ...e, scale: 1 });
    t.rig.position.set(...p.position);
    t.rig.quaternion.set(...p.quaternion);
    t.requestRender();
    return;
  }
  if (!t || !state.cloud || !state.cloud.pivot) return;
  const p = poseFromEdit(state.cloud.pivot, e);
  t.handle.position.set(...p.position);
  t.handle.quaternion.set(...p.quaternion);
  t.handle.scale.setScalar(p.scale);
  state.lastScale = p.scale;
  updatePointSize(state);
}
function onGizmoChange() {
  const t = state.three;
  if (state.editMode === 'camera') {  // the camera's own move: no live drawing, the exact preview on pause
    const r = t.rig;
    setFields(editFromPose([0, 0, 0], r.position.toArray(), r.quaternion.toArray(), 1, [num('ax'), num('ay'), num('az')]));
    r.updateMatrixWorld(true);
    live.change(r.matrixWorld.elements, 1);
    return;
  }
  if (t.gizmo.mode === 'scale') {
    const s = uniformScale(t.handle.scale.x, t.handle.scale.y, t.handle.scale.z, state.lastScale);
    t.handle.scale.setScalar(s);
    state.lastScale = s;
    updatePointSize(state);
  }
  const h = t.handle;
  const e = editFromPose(state.cloud.pivot, h.position.toArray(), h.quaternion.toArray(), h.scale.x,
    [num('ax'), num('ay'), num('az')]);
  setFields(e);
  h.updateMatrixWorld(true);
  live.change(h.matrixWorld.elements, h.scale.x);  // drawn in the page now, exact preview when the drag pauses
}
for (const id of FIELDS) {
  $(id).addEventListener('input', () => {
    const e = editFromFields();
    if ([...e.translate, ...e.rotate_axis, e.rotate_deg, e.scale].some((v) => !Number.isFinite(v))) {
      setPreviewStatus('fill every transform field with a number', true);
      return;
    }
    applyEditToGizmo(e);
    requestPreview();
  });
}
for (const mode of ['translate', 'rotate', 'scale']) {
  $(`mode-${mode}`).addEventListener('click', () => {
    if (state.three) state.three.gizmo.setMode(mode);
    for (const m of ['translate', 'rotate', 'scale']) $(`mode-${m}`).classList.toggle('active', m === mode);
  });
}
function resetTransform() {
  setFields(IDENTITY);
  applyEditToGizmo(editFromFields());
}

// ---------------------------------------------------------------- object / camera mode, several objects
function setEditMode(mode) {
  if (mode === state.editMode) return;
  state.edits[state.editMode] = editFromFields();
  state.editMode = mode;
  const camera = mode === 'camera';
  for (const m of ['object', 'camera']) $(`edit-${m}`).classList.toggle('active', m === mode);
  $('mode-scale').disabled = camera;
  $('scale').disabled = camera;
  if (camera && $('mode-scale').classList.contains('active')) $('mode-translate').click();  // a camera does not scale
  $('objects-box').hidden = camera;
  $('mode-note').textContent = camera
    ? 'Camera mode: the gizmo moves the camera (the orange marker); the whole scene is seen from the moved viewpoint, uncovered regions are generated. No object needed. The preview is computed when the drag pauses.'
    : 'Drag the gizmo in the 3D view, or type. Camera axes: x right, y down, z forward (scene units).';
  live.setEnabled(!camera);
  applyModeToView(state);
  setFields(state.edits[mode]);
  applyEditToGizmo(editFromFields());
  updateRenderButton();
  requestPreview();
}
$('edit-object').addEventListener('click', () => setEditMode('object'));
$('edit-camera').addEventListener('click', () => setEditMode('camera'));
// what moves, for the preview and the render
function editBody() {
  const s = state.session;
  if (state.editMode === 'camera') return { transform: editFromFields(), mode: 'camera' };
  return { transform: editFromFields(), mode: 'object', objects: state.objects.others(s ? s.selected : null) };
}
$('add-object').addEventListener('click', () => guarded(async () => {
  const s = state.session;
  if (!s || s.selected === null) throw new Error('add object: select an object first (step 2)');
  state.objects.keep(s.selected, s.masks[s.selected].name, editFromFields());
  const next = s.masks.find((m) => m.index !== s.selected && !state.objects.has(m.index));
  if (next) await loadSession(await postJSON(`/api/sessions/${s.id}/select`, { mode: 'mask', index: next.index }));
  else $('objects-hint').textContent = 'kept: now select another object (step 2: upload a mask or use a selection tool)';
}));
$('reset-transform').addEventListener('click', () => { resetTransform(); requestPreview(); });

// ---------------------------------------------------------------- preview (latest wins)
let previewInFlight = false, previewPending = false;
function setPreviewStatus(text, isError = false) {
  const el = $('preview-status');
  el.textContent = text;
  el.classList.toggle('error', isError);
  el.classList.toggle('muted', !isError);
}
async function requestPreview() {
  const s = state.session;
  if (!s || (s.selected === null && state.editMode !== 'camera')) return;
  if (previewInFlight) { previewPending = true; return; }
  previewInFlight = true;
  previewPending = false;
  state.previewBusy = true;
  state.previewRequests += 1;
  const t0 = performance.now();
  const seq = live.seq;  // the gizmo change this preview shows
  try {
    const r = await postJSON(`/api/sessions/${s.id}/preview`, editBody());
    $('preview-img').src = r.image;
    live.exactShown(seq);
    state.previewCount += 1;
    $('preview-img').dataset.count = String(state.previewCount);
    const what = state.editMode === 'camera' ? 'camera move' : `${1 + editBody().objects.length} object(s)`;
    setPreviewStatus(`preview (${what}) ${Math.round(performance.now() - t0)} ms (server ${Math.round(r.timings_ms.server_total)} ms) · ${r.object_pixels} ${state.editMode === 'camera' ? 'scene' : 'object'} px · ${r.hole_pixels} hole px (magenta)`);
  } catch (e) {
    setPreviewStatus(`preview: ${e.message}`, true);
  } finally {
    previewInFlight = false;
    if (previewPending) requestPreview();
    else state.previewBusy = false;
  }
}

// ---------------------------------------------------------------- sessions and selection
async function loadSession(info) {
  if (!state.session || state.session.id !== info.id) {  // a new image: nothing kept from the last one
    state.edits = { object: IDENTITY, camera: IDENTITY };
    state.objects.items = [];
    state.objects.changed();
  }
  state.session = info;
  $('objects-hint').textContent = '';
  $('input-img').src = info.image_url;
  $('prompt').value = info.prompt;
  const sel = $('mask-select');
  sel.innerHTML = '';
  if (!info.masks.length) sel.add(new Option('(no object yet: upload a mask or select one)', ''));
  for (const m of info.masks) sel.add(new Option(`${m.name} (${m.pixels} px)`, String(m.index)));
  if (info.selected !== null) sel.value = String(info.selected);
  $('results').hidden = true;
  // the selected object's move: kept in the list (taken out: the gizmo moves it now) or none yet
  const kept = info.selected !== null ? state.objects.take(info.selected) : null;
  state.edits.object = kept || IDENTITY;
  setFields(state.edits[state.editMode]);
  const cloud = await api(info.points_url);
  buildCloud(state, cloud);
  applyEditToGizmo(editFromFields());
  await live.setScene(info, cloud);
  updateRenderButton();
  if (info.selected !== null || state.editMode === 'camera') {
    $('preview-img').src = info.image_url;
    await requestPreview();
  } else {
    $('preview-img').removeAttribute('src');
    setPreviewStatus('select the object to edit (step 2)');
  }
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
  const info = await postJSON('/api/sessions/scene', { scene: $('scene-select').value });
  await loadSession(info);
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
    fd.append('prompt', $('prompt').value);
    fd.append('fov_deg', $('upload-fov').value || '55');
    await loadSession(await api('/api/sessions', { method: 'POST', body: fd }));
  }, $('upload-submit'), 'uploading…');
});
$('mask-select').addEventListener('change', () => guarded(async () => {
  if (!state.session || $('mask-select').value === '') return;
  await loadSession(await postJSON(`/api/sessions/${state.session.id}/select`, { mode: 'mask', index: Number($('mask-select').value) }));
}));
$('mask-file').addEventListener('change', () => guarded(async () => {
  const f = $('mask-file').files[0];
  if (!f) return;
  if (!state.session) throw new Error('mask: open an image first (step 1)');
  const fd = new FormData();
  fd.append('mask', f);
  $('mask-file').value = '';
  await loadSession(await api(`/api/sessions/${state.session.id}/mask`, { method: 'POST', body: fd }));
}));
$('click-toggle').addEventListener('change', () => $('input-img').classList.toggle('clickable', $('click-toggle').checked));
$('input-img').addEventListener('click', (ev) => {
  if (!$('click-toggle').checked || !state.session) return;
  const r = ev.target.getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * state.session.width;
  const y = ((ev.clientY - r.top) / r.height) * state.session.height;
  guarded(async () => {
    await loadSession(await postJSON(`/api/sessions/${state.session.id}/select`, { mode: 'click', x, y }));
  }, null, 'segmenting the clicked object…');
});
$('text-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(async () => {
    if (!state.session) throw new Error('text selection: open an image first (step 1)');
    await loadSession(await postJSON(`/api/sessions/${state.session.id}/select`, { mode: 'text', query: $('text-query').value }));
  }, null, 'finding the object…');
});

// ---------------------------------------------------------------- render with progress
function updateRenderButton() {
  const why = state.info && state.info.render_unavailable;
  const camera = state.editMode === 'camera';
  const selected = Boolean(state.session) && state.session.selected !== null;
  const ready = camera ? Boolean(state.session) : selected;
  const busy = Boolean(why) || Boolean(state.job);
  const others = camera || !state.session ? 0 : state.objects.others(state.session.selected).length;
  $('render-btn').disabled = busy || !ready;
  $('render-btn').textContent = camera ? 'Render camera move' : (others ? `Render ${others + 1} objects` : 'Render');
  $('remove-btn').disabled = busy || !selected || camera;
  $('animate-btn').disabled = busy || !ready;
  $('animate-note').textContent = camera ? 'the camera from the image\'s viewpoint to the moved one, from the same inversion'
    : (others ? `the ${others + 1} objects from their places to their transforms, from the same inversion`
      : 'the object from its place to the transform, from the same inversion');
  $('add-object').disabled = !selected || camera;
  $('render-note').textContent = why ? `Rendering unavailable: ${why}` : (ready ? '' : (camera ? 'open an image first' : 'open an image and select an object first'));
  $('render-note').classList.toggle('error', Boolean(why));
}
function setProgress(frac, text, failed = false) {
  const pct = Math.round(100 * Math.max(0, Math.min(1, frac)));
  $('progress-fill').style.width = `${pct}%`;
  $('progress').setAttribute('aria-valuenow', String(pct));
  $('progress').classList.toggle('failed', failed);
  $('progress-text').textContent = text;
}
function describe(st) {
  if (st.state === 'queued') return st.queue_position > 0 ? `queued (${st.queue_position} ahead)` : 'queued';
  if (st.state === 'done') return `done · ${st.info && st.info.reused_inversion ? 'inversion reused from cache' : 'inverted and edited'}`;
  if (st.state === 'error') return `failed: ${st.error}`;
  return st.total ? `${st.stage}: step ${st.step} of ${st.total}` : st.stage;
}
function onJobUpdate(st) {
  setProgress(st.fraction, describe(st), st.state === 'error');
  const kind = state.jobKind;
  if (st.state === 'done') { finishJob(); if (kind === 'animate') showAnimation(st); else showResults(st, kind); }
  if (st.state === 'error') { finishJob(); showError(`${kind}: ${st.error}`); }
  return st.state === 'done' || st.state === 'error';
}
function finishJob() { state.job = null; updateRenderButton(); }
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
    const kind = state.jobKind;
    finishJob();
    setProgress(0, `failed: ${e.message}`, true);
    showError(`${kind}: ${e.message}`);
  }
}
$('render-btn').addEventListener('click', () => guarded(async () => {
  const s = state.session;
  const steps = $('steps').value.trim();
  const body = { session_id: s.id, ...editBody(), prompt: $('prompt').value, seed: Number($('seed').value || 0) };
  if (steps) body.num_steps = Number(steps);
  await submitJob('/api/jobs', body, 'render');
}));
$('remove-btn').addEventListener('click', () => guarded(async () => {
  const s = state.session;
  const steps = $('steps').value.trim();
  const body = { prompt: $('prompt').value, seed: Number($('seed').value || 0) };
  if (steps) body.num_steps = Number(steps);
  await submitJob(`/api/sessions/${s.id}/remove`, body, 'remove');
}));
async function submitJob(path, body, kind) {
  setProgress(0, 'submitting…');
  $('results').hidden = true;
  try {
    const st = await postJSON(path, body);
    state.job = st.id;
    state.lastJob = st.id;  // read by the browser tests
    state.jobKind = kind;
    updateRenderButton();
    onJobUpdate(st);
    watchJob(st.id);
  } catch (e) {
    setProgress(0, `failed: ${e.message}`, true);
    throw e;
  }
}
function showResults(st, kind = 'render') {
  $('result-depth-caption').textContent = kind === 'remove' ? 'background depth (object removed)' : 'edited depth';
  const r = st.results;
  $('compare-before').src = r.input;
  $('compare-after').src = r.edited;
  if (r.edited_depth) $('result-depth').src = r.edited_depth;
  const tm = (st.info && st.info.timings) || {};
  $('result-info').textContent = Object.entries(tm).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(' · ');
  const dl = $('downloads');
  dl.innerHTML = '';
  for (const [name, url] of Object.entries(r)) {
    const a = document.createElement('a');
    a.href = url; a.download = ''; a.textContent = name.endsWith('_npy') ? `${name.slice(0, -4)}.npy` : `${name}.png`;
    dl.appendChild(a);
  }
  $('anim-result').hidden = true;
  $('results').hidden = false;
}

// ---------------------------------------------------------------- animation after a render
$('animate-btn').addEventListener('click', () => guarded(async () => {
  const s = state.session;
  const frames = Number($('anim-frames').value);
  const steps = $('steps').value.trim();
  const body = { ...editBody(), frames, prompt: $('prompt').value, seed: Number($('seed').value || 0) };  // what a render moves
  if (steps) body.num_steps = Number(steps);
  setProgress(0, 'submitting the animation…');
  $('anim-result').hidden = true;
  try {
    const st = await postJSON(`/api/sessions/${s.id}/animate`, body);
    state.job = st.id;
    state.lastJob = st.id;
    state.jobKind = 'animate';
    updateRenderButton();
    onJobUpdate(st);
    watchJob(st.id);
  } catch (e) {
    setProgress(0, `failed: ${e.message}`, true);
    throw e;
  }
}));
function showAnimation(st) {
  $('anim-gif').src = st.results.gif;
  $('anim-mp4').hidden = !st.results.mp4;  // without the 'video' extra there is no MP4
  if (st.results.mp4) $('anim-mp4').href = st.results.mp4;
  $('anim-gif-link').href = st.results.gif;
  $('anim-info').textContent = `${st.info.frames} frames · ${st.info.reused_inversion ? 'inversion reused from the render' : 'inverted'}`;
  $('anim-result').hidden = false;
}
$('compare-range').addEventListener('input', () => {
  $('compare-after-wrap').style.clipPath = `inset(0 0 0 ${$('compare-range').value}%)`;
});

// ---------------------------------------------------------------- start
async function start() {
  await initThree(state, $('view3d'), { onGizmoChange, onDragging: (on) => live.setDragging(on) });
  try {
    state.info = await api('/api/info');
  } catch (e) {
    showError(`could not reach the server: ${e.message}`);
    $('server-info').textContent = 'offline';
    return;
  }
  const i = state.info;
  $('server-info').textContent = `v${i.version} · model ${i.model}${i.render_unavailable ? ' (render unavailable)' : ''} · uploads ≤ ${i.limits.max_upload_mb} MB`;
  for (const sc of i.scenes) $('scene-select').add(new Option(sc.title, sc.id));
  $('anim-frames').max = String(i.limits.max_animation_frames);
  $('click-mode').hidden = !i.selection_modes.includes('click');
  $('text-form').hidden = !i.selection_modes.includes('text');
  updateRenderButton();
  document.body.dataset.ready = '1';
}
start();
