// The result panel: the last finished job of each kind (render, removal, animation) of the open
// image, one shown at a time at the input's displayed size (with zoom), before/after for stills,
// the GIF for an animation, and downloads named after the scene and the edit
// (e.g. `mug_translate-0.3_0_0.5.png`).

const $ = (id) => document.getElementById(id);
const KINDS = { render: 'Render', remove: 'Removal', animate: 'Animation' };

const num = (v) => String(Number(Number(v).toFixed(3)));
const slug = (s) => String(s).toLowerCase().replace(/[^a-z0-9.]+/g, '-').replace(/^[-.]+|[-.]+$/g, '') || 'image';

/** The file-name part of an edit: `translate-0.3_0_0.5_rotate-25_scale-1.2`, `camera_...`, `remove-mug`. */
export function editSlug(kind, body, objectName) {
  if (kind === 'remove') return `remove-${slug(objectName || 'object')}`;
  const e = body.transform, parts = [];
  if (e.translate.some((v) => v !== 0)) parts.push(`translate-${e.translate.map(num).join('_')}`);
  if (e.rotate_deg) parts.push(`rotate-${num(e.rotate_deg)}`);
  if (e.scale !== 1) parts.push(`scale-${num(e.scale)}`);
  const what = parts.join('_') || 'unchanged';
  if (body.mode === 'camera') return `camera_${what}`;
  const n = (body.objects || []).length;
  return n ? `${n + 1}objects_${what}` : what;
}

/** The download name of result `name` (`edited`, `edited_depth_npy`, `gif`, ...). */
export function downloadName(scene, kind, body, objectName, name) {
  const base = `${slug(scene)}_${editSlug(kind, body, objectName)}`;
  if (name === 'edited' || name === 'gif') return `${base}.${name === 'gif' ? 'gif' : 'png'}`;
  if (name === 'mp4') return `${base}.mp4`;
  if (name.endsWith('_npy')) return `${base}_${name.slice(0, -4)}.npy`;
  return `${base}_${name}.png`;
}

export class ResultPanel {
  /** @param {import('./store.js').Store} store */
  constructor(store) {
    this.store = store;
    this.zoom = 1;
    for (const z of [1, 2, 4]) $(`zoom-${z}`).addEventListener('click', () => this.setZoom(z));
    $('compare-range').addEventListener('input', () => {
      $('compare-after-wrap').style.clipPath = `inset(0 0 0 ${$('compare-range').value}%)`;
    });
    for (const b of $('result-kinds').querySelectorAll('button')) {
      b.addEventListener('click', () => { this.store.shown = b.dataset.kind; this.show(); });
    }
    new ResizeObserver(() => this.fit()).observe($('input-img'));
    this.fit();
  }

  setZoom(z) {
    this.zoom = z;
    for (const k of [1, 2, 4]) $(`zoom-${k}`).setAttribute('aria-pressed', String(k === z));
    this.fit();
  }

  /** The result box takes the input's displayed size; the view inside it that times the zoom. */
  fit() {
    const img = $('input-img'), s = this.store.session;
    const w = img.clientWidth, h = s ? (w * s.height) / s.width : 0;
    const box = $('result-scroll'), view = $('result-view');
    if (!s || !w) { box.style.width = ''; box.style.height = ''; view.style.width = ''; view.style.height = ''; return; }
    box.style.width = `${w}px`;
    box.style.height = `${h}px`;
    view.style.width = `${w * this.zoom}px`;
    view.style.height = `${h * this.zoom}px`;
  }

  /** Show the store's chosen result (or none). */
  show() {
    const st = this.store, r = st.shown ? st.results[st.shown] : null;
    $('results').hidden = !r;
    $('result-empty').hidden = Boolean(r);
    $('result-view').hidden = !r;
    for (const b of $('result-kinds').querySelectorAll('button')) {
      b.hidden = !st.results[b.dataset.kind];
      b.setAttribute('aria-pressed', String(b.dataset.kind === st.shown));
    }
    if (!r) return;
    const anim = r.kind === 'animate', res = r.status.results, info = r.status.info || {};
    const objectName = this.objectName(r);
    $('result-title').textContent = `${KINDS[r.kind]}: ${describe(r, objectName)}`;
    $('compare').hidden = anim;
    $('compare-controls').hidden = anim;
    $('anim-result').hidden = !anim;
    $('anim-links').hidden = !anim;
    $('result-depth-fig').hidden = anim || !res.edited_depth;
    const name = (n) => downloadName(st.sceneName, r.kind, r.body, objectName, n);
    if (anim) {
      $('anim-gif').src = res.gif;
      $('anim-gif-link').href = res.gif;
      $('anim-gif-link').download = name('gif');
      $('anim-gif-link').textContent = name('gif');
      $('anim-mp4').hidden = !res.mp4;  // without the 'video' extra there is no MP4
      if (res.mp4) { $('anim-mp4').href = res.mp4; $('anim-mp4').download = name('mp4'); $('anim-mp4').textContent = name('mp4'); }
      $('anim-info').textContent = `${info.frames} frames · ${info.reused_inversion ? 'inversion reused from the render' : 'inverted'}`;
    } else {
      $('compare-before').src = res.input;
      $('compare-after').src = res.edited;
      $('compare-after').alt = `after: ${describe(r, objectName)}`;
      if (res.edited_depth) $('result-depth').src = res.edited_depth;
      $('result-depth-caption').textContent = r.kind === 'remove' ? 'background depth (object removed)' : 'edited depth';
    }
    const tm = info.timings || {};
    $('result-info').textContent = Object.entries(tm).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`).join(' · ');
    const dl = $('downloads');
    dl.innerHTML = '';
    for (const [n, url] of Object.entries(res)) {
      if (anim && n.startsWith('frame_')) continue;
      const a = document.createElement('a');
      a.href = url;
      a.download = name(n);
      a.textContent = name(n);
      dl.appendChild(a);
    }
    this.fit();
  }

  objectName(r) { return r.objectName || 'object'; }
}

function describe(r, objectName) {
  if (r.kind === 'remove') return `${objectName} removed`;
  const e = r.body.transform, f = (v) => num(v);
  const parts = [];
  if (e.translate.some((v) => v !== 0)) parts.push(`move (${e.translate.map(f).join(', ')})`);
  if (e.rotate_deg) parts.push(`turn ${f(e.rotate_deg)}°`);
  if (e.scale !== 1) parts.push(`scale ${f(e.scale)}`);
  const what = parts.join(', ') || 'unchanged';
  const n = (r.body.objects || []).length;
  const whom = r.body.mode === 'camera' ? 'camera' : (n ? `${n + 1} objects` : objectName);
  return `${whom}, ${what}${r.kind === 'animate' ? `, ${r.body.frames} frames` : ''}`;
}
