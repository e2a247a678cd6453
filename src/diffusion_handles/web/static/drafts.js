// Drafts: when the handle pauses (PAUSE_MS with no change of the edit), the page asks the server
// for a quick render of the current edit (POST /api/jobs with preset "draft": few steps, the
// image's draft inversion cached and reused), draws it over the result box labelled "draft" as
// soon as it is ready, and cancels it (POST /api/jobs/{id}/cancel) as soon as the handle moves
// again. The full-quality render runs only when asked (Render). Drafts never take the page's job
// slot: Render, Remove and Animate stay free, and starting one of them cancels the draft.
// Failures are shown on the draft's own status line, never in the error box.
import { isIdentity } from './store.js';

export const PAUSE_MS = 400;

export class Drafts {
  /**
   * @param {import('./store.js').Store} store
   * @param {{api: Function, postJSON: Function, request: () => (object|null), onChange: () => void, log: object[]}} deps
   *   request: the draft's request body for the current edit (null when there is nothing to render);
   *   onChange: redraw the draft on screen; log: where each shown draft's timing is recorded.
   */
  constructor(store, deps) {
    this.store = store;
    this.deps = deps;
    this.timer = null;
    this.lastChange = 0;
    this.source = null;  // the EventSource of the draft in flight
    this.cancelled = [];  // ids of drafts cancelled because the handle moved (read by the tests)
    this.status = '';
  }

  setStatus(text, isError = false) {
    this.status = text;
    const el = document.getElementById('draft-status');
    if (!el) return;
    el.textContent = text;
    el.classList.toggle('error', isError);
    el.classList.toggle('muted', !isError);
  }

  /** The edit changed (a drag step, a typed field, a key): cancel the draft in flight, wait for a pause. */
  changed() {
    this.lastChange = performance.now();
    clearTimeout(this.timer);
    this.cancel('the handle moved');
    if (this.store.draftResult) this.deps.onChange();  // the draft on screen is now of an earlier position
    if (!this.store.autoDraft) return;
    this.timer = setTimeout(() => this.start(this.lastChange), PAUSE_MS);
  }

  /** Stop drafting for now (a full job is asked, the image changes, the switch is turned off). */
  stop(why) {
    clearTimeout(this.timer);
    this.timer = null;
    this.cancel(why);
  }

  /** Cancel the draft in flight, if any (the server stops it at the end of its current step). */
  cancel(why) {
    const d = this.store.dropDraft();
    if (this.source) { this.source.close(); this.source = null; }
    if (!d) return;
    if (d.id) this.post(d.id);  // one still being submitted is cancelled when its id arrives (start)
    this.setStatus(`draft cancelled: ${why}`);
  }

  async post(id) {
    this.cancelled.push(id);
    try {
      await this.deps.api(`/api/jobs/${id}/cancel`, { method: 'POST' });
    } catch (e) {
      this.setStatus(`draft: could not cancel (${e.message})`, true);
    }
  }

  /** The handle paused since `pausedAt`: render a draft of the current edit unless it is already drawn. */
  async start(pausedAt) {
    const st = this.store;
    this.timer = null;
    if (!st.autoDraft || st.job || !st.session || (st.info && st.info.render_unavailable)) return;
    const body = this.deps.request();
    if (!body) return;
    const key = st.editKey(body);
    if (st.draftResult && st.draftResult.key === key) { st.draftShown = true; this.deps.onChange(); return; }
    if (st.draft && st.draft.key === key) return;
    this.cancel('another draft was asked');
    st.startDraft(key, body, pausedAt);
    const d = st.draft;
    this.setStatus('draft: submitting…');
    let status;
    try {
      status = await this.deps.postJSON('/api/jobs', body);
    } catch (e) {
      if (st.draft === d) {
        st.dropDraft();
        this.setStatus(`draft: ${e.message}`, true);
      }
      return;
    }
    if (st.draft !== d) {  // the handle moved while it was being submitted
      this.post(status.id);
      return;
    }
    d.id = status.id;
    d.submittedAt = performance.now();
    this.watch(d);
  }

  watch(d) {
    const es = new EventSource(`/api/jobs/${d.id}/events`);
    this.source = es;
    es.onmessage = (m) => {
      const status = JSON.parse(m.data);
      if (this.store.draft !== d) { es.close(); return; }
      if (status.state === 'queued' || status.state === 'running') {
        this.setStatus(`draft: ${status.message || status.stage}`);
        return;
      }
      es.close();
      this.source = null;
      this.ended(d, status);
    };
    es.onerror = () => {
      es.close();
      if (this.source === es) this.source = null;
      if (this.store.draft === d) this.poll(d);
    };
  }

  async poll(d) {
    try {
      while (this.store.draft === d) {
        const status = await this.deps.api(`/api/jobs/${d.id}`);
        if (status.state !== 'queued' && status.state !== 'running') { this.ended(d, status); return; }
        await new Promise((r) => setTimeout(r, 300));
      }
    } catch (e) {
      if (this.store.draft === d) { this.store.dropDraft(); this.setStatus(`draft: ${e.message}`, true); }
    }
  }

  ended(d, status) {
    const result = this.store.finishDraft(d.id, status, (performance.now() - d.pausedAt) / 1000);
    if (status.state === 'error') this.setStatus(`draft failed: ${status.error}`, true);
    else if (status.state === 'cancelled') this.setStatus('draft cancelled');
    if (!result) return;
    const info = status.info || {};
    const img = document.getElementById('draft-img');
    const shown = () => {
      const seconds = (performance.now() - d.pausedAt) / 1000;
      result.seconds = seconds;
      this.deps.log.push({ id: d.id, seconds_from_pause: seconds, seconds_job: status.finished - status.started,
        reused_inversion: Boolean(info.reused_inversion), fwd_eq: info.fwd_eq });
      this.setStatus(`draft ready ${seconds.toFixed(1)} s after the pause (${info.reused_inversion ? 'inversion reused' : 'inverted'}, `
        + `${info.fwd_eq} UNet passes) · Render for full quality`);
    };
    img.addEventListener('load', shown, { once: true });
    img.addEventListener('error', () => this.setStatus('draft: its image did not load', true), { once: true });
    this.deps.onChange();
  }
}

/** Whether `body` moves nothing (no draft to render). */
export function movesNothing(body) {
  return isIdentity(body.transform) && !(body.objects || []).length;
}
