// Measurement hooks for the browser tests and benchmarks/web_drag.py (window.__handles.probe):
// continue a gizmo drag the test started with a real mouse press, one pointer move per
// displayed frame (as a browser delivers a continuous drag), and time the page's drawing.

import { setDragging } from './view3d.js';

const nextFrame = () => new Promise((r) => requestAnimationFrame(r));

function timeIt(fn, n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    fn();
    out.push(performance.now() - t0);
  }
  return out;
}

export function installProbe(state) {
  state.probe = {
    /** Move the pressed mouse right by `stepPx` per frame, `moves` times, over the 3D view. */
    async drag(x, y, moves, stepPx) {
      const canvas = state.three.renderer.domElement, live = state.live;
      const requests0 = state.previewRequests;
      for (let k = 1; k <= moves; k++) {
        canvas.dispatchEvent(new PointerEvent('pointermove', { clientX: x + stepPx * k, clientY: y, pointerId: 1,
          pointerType: 'mouse', isPrimary: true, button: -1, buttons: 1, bubbles: true }));
        await nextFrame();
      }
      await nextFrame();  // the last move drawn
      return { requests: state.previewRequests - requests0, stats: live.stats, visible: !live.canvas.hidden,
        splat: live.canvas.toDataURL('image/png') };
    },
    /** Intervals between `n` display frames with nothing moving (ms). */
    async idleFrames(n) {
      const ts = [];
      for (let i = 0; i <= n; i++) ts.push(await nextFrame());
      return ts.slice(1).map((t, i) => t - ts[i]);
    },
    /** Draw times (ms, waiting for the GPU) of the splat alone and of the 3D view alone, at full
     * detail and at the reduced detail of a drag. */
    profile(n = 20) {
      const live = state.live, t = state.three, gl = t.renderer.getContext();
      const px = new Uint8Array(4);
      const view = () => { t.renderer.render(t.scene, t.camera); gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); };
      const out = { splat: timeIt(() => live.splat.draw(live.matrix, live.scale, true), n), view3d: timeIt(view, n) };
      setDragging(t, true, 'gizmo');
      out.view3dDragging = timeIt(view, n);
      setDragging(t, false);
      setDragging(t, true, 'orbit');
      out.view3dOrbiting = timeIt(view, n);
      setDragging(t, false);
      return out;
    },
  };
}
