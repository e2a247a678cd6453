// Live preview while the gizmo is dragged: the page draws the moved object itself (splat.js)
// once per display frame, and asks the server for the exact preview only when the drag pauses
// (PAUSE_MS without movement) or ends. Frame timings are kept in `stats` for the browser tests
// and benchmarks/web_drag.py.
import { Splat } from './splat.js';

export const PAUSE_MS = 150;

function loadImage(url) {
  const img = new Image();
  img.src = url;
  return img.decode().then(() => img);
}

export class LivePreview {
  /**
   * @param {HTMLCanvasElement} canvas laid over the preview image
   * @param {() => void} requestPreview asks the server for the exact preview of the current fields
   */
  constructor(canvas, requestPreview) {
    this.canvas = canvas;
    this.requestPreview = requestPreview;
    try {
      this.splat = new Splat(canvas);
    } catch (e) {
      this.splat = { kind: 'none', error: e.message };
    }
    this.ready = false;
    this.enabled = true;  // off in camera mode: the server's preview only, when the drag pauses
    this.dragging = false;
    this.seq = 0;  // counts gizmo changes
    this.requestedSeq = 0;  // the change the last preview request was sent for
    this.dirty = false;
    this.raf = null;
    this.lastTick = null;
    this.sync = false;  // wait for the GPU after each draw (timings then include the drawing)
    this.resetStats();
  }

  /** Frame intervals and draw times (ms) while dragging; `draws` counts splat draws. */
  resetStats() {
    this.stats = { kind: this.splat.kind, frames: [], drawMs: [], draws: 0, pauses: 0 };
  }

  async setScene(info, cloud) {
    this.hide();
    this.ready = false;
    if (this.splat.kind === 'none' || info.selected === null || !cloud.pivot) return;
    try {
      const [image, mask] = await Promise.all([loadImage(info.image_url), loadImage(info.mask_url)]);
      this.splat.setScene(image, mask, cloud, info.width, info.height);
      this.ready = true;
    } catch (e) {  // no live drawing: every change asks the server, as before
      this.stats.kind = `none (${e.message})`;
    }
  }

  hide() { this.canvas.hidden = true; }

  /** Draw in the page (object mode) or not (camera mode: the exact preview when the drag pauses). */
  setEnabled(on) {
    this.enabled = on;
    if (!on) this.hide();
  }

  request() {
    this.requestedSeq = this.seq;
    this.requestPreview();
  }

  /** The gizmo moved: draw it on the next frame; the server's preview once the drag pauses. */
  change(matrix, scale) {
    this.seq += 1;
    this.matrix = Array.from(matrix);
    this.scale = scale;
    clearTimeout(this.timer);
    if (!this.ready || !this.enabled) {  // nothing drawn here: the server's preview when the drag pauses or ends
      if (this.dragging) this.timer = setTimeout(() => { this.stats.pauses += 1; this.request(); }, PAUSE_MS);
      else this.request();
      return;
    }
    this.canvas.hidden = false;
    this.dirty = true;
    this.loop();
    if (!this.dragging) { this.request(); return; }
    this.timer = setTimeout(() => { this.stats.pauses += 1; this.request(); }, PAUSE_MS);
  }

  setDragging(on) {
    this.dragging = on;
    if (on) { this.lastTick = null; this.loop(); return; }
    clearTimeout(this.timer);
    if (this.requestedSeq !== this.seq) this.request();  // the drag ended: the exact preview now
  }

  /** A server preview for gizmo change `seq` is shown: the splat goes if nothing moved since. */
  exactShown(seq) {
    if (seq === this.seq) this.hide();
  }

  loop() {
    if (this.raf === null) this.raf = requestAnimationFrame((t) => this.tick(t));
  }

  tick(now) {
    this.raf = null;
    if (this.dragging && this.lastTick !== null) this.stats.frames.push(now - this.lastTick);
    this.lastTick = this.dragging ? now : null;
    if (this.dirty) {
      this.dirty = false;
      const t0 = performance.now();
      this.splat.draw(this.matrix, this.scale, this.sync);
      this.stats.drawMs.push(performance.now() - t0);
      this.stats.draws += 1;
    }
    if (this.dragging) this.loop();  // one tick per display frame while the drag lasts
  }
}
