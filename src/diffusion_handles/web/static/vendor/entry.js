// Entry of the vendored three.js bundle: the core library plus the two controls the page uses.
export * from 'three';
export { TransformControls } from 'three/examples/jsm/controls/TransformControls.js';
export { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
