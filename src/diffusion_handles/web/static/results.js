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
  if (body.restyle) parts.push(`restyle-${slug(body.restyle)}`);
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
    this.effects = false;  // the effects region tinted over the result
    $('effects-toggle').addEventListener('click', () => { this.effects = !this.effects; this.drawEffects(); });
    $('draft-toggle').addEventListener('click', () => { this.store.draftShown = !this.store.draftShown; this.showDraft(); });
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
    const box = $('result-scroll'), views = [$('result-view'), $('draft-view')];
    if (!s || !w) {
      box.style.width = ''; box.style.height = '';
      for (const v of views) { v.style.width = ''; v.style.height = ''; }
      return;
    }
    box.style.width = `${w}px`;
    box.style.height = `${h}px`;
    for (const v of views) { v.style.width = `${w * this.zoom}px`; v.style.height = `${h * this.zoom}px`; }
  }

  /**
   * The last draft drawn over the result box (tag "draft") while the store says so; dimmed with
   * a caption once the edit has moved on from the position it shows.
   * @param {string|null} currentKey the store's key of the current edit's draft request
   */
  showDraft(currentKey = this.currentKey) {
    this.currentKey = currentKey;
    const st = this.store, d = st.draftResult, on = Boolean(d) && st.draftShown;
    $('draft-view').hidden = !on;
    $('draft-toggle').hidden = !d;
    $('draft-toggle').setAttribute('aria-pressed', String(on));
    const full = st.shown ? st.results[st.shown] : null;
    $('result-tag').textContent = on ? 'draft' : 'result';
    $('result-empty').hidden = on || Boolean(full);
    if (!d) { $('draft-img').removeAttribute('src'); return; }
    const stale = d.key !== currentKey, wasHidden = $('draft-view').dataset.on !== String(on);
    $('draft-view').dataset.on = String(on);
    $('draft-view').classList.toggle('stale', stale);
    $('result-tag').textContent = on ? (stale ? 'draft (earlier edit)' : 'draft') : 'result';
    if ($('draft-img').getAttribute('src') !== d.status.results.edited) $('draft-img').src = d.status.results.edited;
    $('draft-img').alt = `draft: ${describe({ kind: 'render', body: d.body }, this.objectName(d))}`;
    if (wasHidden) this.fit();
  }

  /** The effects region (white where the old shadow was and the new one falls) tinted over the result. */
  drawEffects() {
    const st = this.store, r = st.shown ? st.results[st.shown] : null;
    const url = r && r.kind !== 'animate' ? r.status.results.effects : null;
    const canvas = $('effects-overlay');
    $('effects-toggle').hidden = !url;
    $('effects-toggle').setAttribute('aria-pressed', String(this.effects && Boolean(url)));
    if (!url || !this.effects) { canvas.hidden = true; delete canvas.dataset.src; return; }
    if (canvas.dataset.src === url) { canvas.hidden = false; return; }
    const img = new Image();
    img.onload = () => {
      if ((st.shown ? st.results[st.shown] : null) !== r || !this.effects) return;  // another result meanwhile
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const g = canvas.getContext('2d');
      g.drawImage(img, 0, 0);
      const px = g.getImageData(0, 0, canvas.width, canvas.height), a = px.data;
      let lit = 0;
      for (let i = 0; i < a.length; i += 4) {
        const v = (a[i] + a[i + 1] + a[i + 2]) / 3;  // white: the region
        a[i] = 40; a[i + 1] = 200; a[i + 2] = 255; a[i + 3] = Math.round(0.55 * v);
        if (v > 127) lit += 1;
      }
      g.putImageData(px, 0, 0);
      canvas.dataset.src = url;
      canvas.dataset.pixels = String(lit);
      canvas.hidden = false;
      $('effects-note').textContent = lit ? `effects region: ${lit} px (tinted blue)` : 'no effects region was found for this edit';
    };
    img.onerror = () => { $('effects-note').textContent = 'the effects region did not load'; };
    img.src = url;
  }

  /** Show the store's chosen result (or none). */
  show() {
    const st = this.store, r = st.shown ? st.results[st.shown] : null;
    $('results').hidden = !r;
    $('result-view').hidden = !r;
    this.showDraft();
    for (const b of $('result-kinds').querySelectorAll('button')) {
      b.hidden = !st.results[b.dataset.kind];
      b.setAttribute('aria-pressed', String(b.dataset.kind === st.shown));
    }
    if (!r) return;
    const anim = r.kind === 'animate', res = r.status.results, info = r.status.info || {};
    const objectName = this.objectName(r);
    $('result-title').textContent = `${KINDS[r.kind]}: ${describe(r, objectName)}`;
    this.showRestyle(r.kind === 'render' ? info : {});
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
    const light = Array.isArray(info.light_direction) ? [`light direction (${info.light_direction.map((v) => Number(v).toFixed(2)).join(', ')})`] : [];
    $('result-info').textContent = [...light, ...Object.entries(tm).map(([k, v]) => `${k} ${Number(v).toFixed(2)} s`)].join(' · ');
    $('effects-note').textContent = '';
    this.drawEffects();
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

  /** What a restyled render ran (the server's `info.restyle`, `restyle_words`, `generation_prompt`). */
  showRestyle(info) {
    const el = $('result-restyle');
    el.hidden = !info.restyle;
    if (!info.restyle) { el.textContent = ''; return; }
    const old = info.restyle_words ? `“${info.restyle_words}”` : 'the object\'s words';
    el.textContent = `New look applied: “${info.restyle}” in place of ${old}; generated with the prompt “${info.generation_prompt}”`;
  }
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
  const look = r.body.restyle ? `, new look “${r.body.restyle}”` : '';
  return `${whom}, ${what}${look}${r.kind === 'animate' ? `, ${r.body.frames} frames` : ''}`;
}
