// What the gizmo moves: the selected object (other objects' moves kept in a list, all of them
// moved by one render: one z-buffer, one guided generation) or the camera (the whole scene seen
// from a moved viewpoint; a camera marker in the 3D view carries the gizmo). The moves themselves
// live in the page's store (store.js).

/** A wireframe camera (apex at the origin, looking down -z in three.js axes). */
export function cameraRig(THREE) {
  const d = 0.5, w = 0.32, h = 0.24;
  const c = [[-w, -h, -d], [w, -h, -d], [w, h, -d], [-w, h, -d]];
  const v = [];
  for (const p of c) v.push(0, 0, 0, ...p);  // apex to corners
  for (let i = 0; i < 4; i++) v.push(...c[i], ...c[(i + 1) % 4]);  // the image rectangle
  v.push(-0.08, h, -d, 0, h + 0.1, -d, 0, h + 0.1, -d, 0.08, h, -d);  // "up" tick
  const geo = new THREE.BufferGeometry();
  geo.setAttribute('position', new THREE.Float32BufferAttribute(v, 3));
  const rig = new THREE.Group();
  rig.add(new THREE.LineSegments(geo, new THREE.LineBasicMaterial({ color: 0xf0a030 })));
  rig.visible = false;
  return rig;
}

const f2 = (v) => Number(v).toFixed(2);
export function describeEdit(e) {
  const r = e.rotate_deg ? ` · rot ${f2(e.rotate_deg)}° about (${e.rotate_axis.map(f2).join(', ')})` : '';
  return `move (${e.translate.map(f2).join(', ')})${r}${e.scale !== 1 ? ` · scale ${f2(e.scale)}` : ''}`;
}

/** The objects kept for the render besides the selected one, as a list with remove buttons. */
export function renderObjectList(el, items, onDrop) {
  el.innerHTML = '';
  for (const o of items) {
    const li = document.createElement('li');
    li.dataset.mask = String(o.mask);
    const text = document.createElement('span');
    text.textContent = `${o.name}: ${describeEdit(o.transform)}`;
    const del = document.createElement('button');
    del.type = 'button';
    del.textContent = '×';
    del.setAttribute('aria-label', `remove ${o.name} from the list`);
    del.addEventListener('click', () => onDrop(o.mask));
    li.append(text, del);
    el.appendChild(li);
  }
}
