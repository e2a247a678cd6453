// The one owner of the page's state: the open image (session), what the gizmo moves, the moves
// of every object, the job in flight and the last result of each kind. Everything that asks the
// server takes a ticket (`ticket()`) first and drops the answer unless `current(ticket)` still
// holds, so a scene switch, a reselection or a job cannot show or send another scene's data.

export const IDENTITY = Object.freeze({ translate: [0, 0, 0], rotate_axis: [0, 1, 0], rotate_deg: 0, scale: 1 });

const clone = (e) => structuredClone(e);

export function isIdentity(e) {
  return e.translate.every((v) => v === 0) && e.rotate_deg === 0 && e.scale === 1;
}

export class Store {
  constructor() {
    this.info = null;  // GET /api/info
    this.session = null;  // the open image (SessionInfo), null before one is open
    this.sceneName = '';  // names downloads: the scene's id or the uploaded file's name
    this.cloud = null;  // the lifted point cloud of the session
    this.frame = null;  // per image: turn axis (camera axes), object depth, depth limits (depth.js)
    this.generation = 0;  // +1 for each image opened
    this.selection = 0;  // +1 for each object selected
    this.editMode = 'object';  // what the gizmo moves: 'object' or 'camera'
    this.edits = { object: clone(IDENTITY), camera: clone(IDENTITY) };  // the transform of each mode
    this.objects = [];  // other objects moved by the render: {mask, name, transform}
    this.results = {};  // the last finished job of each kind ('render', 'remove', 'animate') of this image
    this.shown = null;  // the kind of result on screen
    this.job = null;  // the job in flight: {id, kind, body, generation}
    this.jobsDone = 0;
    // drafts: a quick render (preset "draft") of the current edit, started by the page itself when
    // the handle pauses, cancelled when it moves again; never in `job` (Render stays free)
    this.autoDraft = true;  // the "auto draft" switch
    this.draft = null;  // the draft in flight: {id, key, body, ticket, generation, pausedAt, objectName}
    this.draftResult = null;  // the last finished draft of this image: {id, key, body, status, seconds}
    this.draftShown = false;  // the draft is drawn over the result box
  }

  /** A token for a request; `current(t)` says whether its answer still belongs on screen. */
  ticket() { return { generation: this.generation, selection: this.selection }; }

  current(t) { return t.generation === this.generation && t.selection === this.selection; }

  /** The identity move of an object on this image: its turn axis is the image's vertical. */
  identity() {
    return { ...clone(IDENTITY), rotate_axis: this.frame ? this.frame.axis.slice() : [0, 1, 0] };
  }

  /** A new image: nothing of the last one is kept (moves, list, results). */
  openSession(info, name) {
    this.generation += 1;
    this.selection += 1;
    this.session = info;
    this.sceneName = name;
    this.cloud = null;
    this.frame = null;
    this.objects = [];
    this.results = {};
    this.shown = null;
    this.draft = null;
    this.draftResult = null;
    this.draftShown = false;
    this.edits = { object: clone(IDENTITY), camera: clone(IDENTITY) };
  }

  /** What a render of `body` (and its prompt and seed) would produce on this image: equal keys, same result. */
  editKey(body) {
    return JSON.stringify([this.generation, this.session ? this.session.selected : null, body]);
  }

  /** A draft was asked for the current edit `key`; the one before it (if any) is returned to be cancelled. */
  startDraft(key, body, pausedAt) {
    const prev = this.draft;
    const s = this.session, mask = s && s.masks.find((m) => m.index === s.selected);
    this.draft = { id: null, key, body, ticket: this.ticket(), generation: this.generation, pausedAt,
      objectName: mask ? mask.name : null };
    return prev;
  }

  /** The handle moved: the draft in flight (if any) is dropped and returned, to be cancelled. */
  dropDraft() {
    const prev = this.draft;
    this.draft = null;
    return prev;
  }

  /** A draft ended; it is kept and shown only if it is still the one asked for. */
  finishDraft(id, status, seconds) {
    const d = this.draft;
    if (!d || d.id !== id) return null;
    this.draft = null;
    if (d.generation !== this.generation || status.state !== 'done') return null;
    this.draftResult = { id, key: d.key, body: d.body, objectName: d.objectName, status, seconds };
    this.draftShown = true;
    return this.draftResult;
  }

  /**
   * Another object of the same image is selected (`info` is the server's answer). The one the
   * gizmo moved so far keeps its move in the list when it has one (or when `keep` says so: Add
   * object); the newly selected object's move comes out of the list.
   */
  selectObject(info, currentEdit, keep = false) {
    const prev = this.session ? this.session.selected : null;
    if (prev !== null && prev !== info.selected && (keep || !isIdentity(currentEdit))) {
      this.keep(prev, currentEdit);
    }
    this.selection += 1;
    this.session = info;
    const i = this.objects.findIndex((o) => o.mask === info.selected);
    const kept = i >= 0 ? this.objects.splice(i, 1)[0].transform : null;
    this.edits.object = kept || this.identity();
    return this.edits.object;
  }

  /** Keep (or replace) `mask`'s move in the list. */
  keep(mask, transform) {
    const m = this.session.masks.find((x) => x.index === mask);
    this.objects = this.objects.filter((o) => o.mask !== mask);
    this.objects.push({ mask, name: m ? m.name : `mask ${mask}`, transform: clone(transform) });
  }

  drop(mask) { this.objects = this.objects.filter((o) => o.mask !== mask); }

  has(mask) { return this.objects.some((o) => o.mask === mask); }

  /** The request's `objects`: every kept object except the selected one. */
  others() {
    const sel = this.session ? this.session.selected : null;
    return this.objects.filter((o) => o.mask !== sel).map((o) => ({ mask: o.mask, transform: clone(o.transform) }));
  }

  /** A job was queued: `body` is what was asked, `objectName` the selected object's name then. */
  startJob(id, kind, body, objectName) {
    this.job = { id, kind, body, objectName, generation: this.generation };
  }

  /** The job ended; its result is kept (and shown) only if it belongs to the image on screen. */
  finishJob(status) {
    const job = this.job;
    this.job = null;
    if (!job || job.generation !== this.generation || !status) return null;
    const result = { kind: job.kind, body: job.body, objectName: job.objectName, status };
    this.results[job.kind] = result;
    this.shown = job.kind;
    this.draftShown = false;  // the newer full result on top
    this.jobsDone += 1;
    return result;
  }
}
