// The live preview drawn in the page while the gizmo is dragged: the image with the object's
// region as a hole (magenta, as the server's preview), and the object's lifted points moved by
// the gizmo's transform, projected through the image's own camera and splatted as squares.
// WebGL2 first (background depth from the point cloud: a moved object goes behind nearer
// scenery), then WebGL1 (no occlusion by the background), then a 2D canvas.
// The exact preview (holes, edited depth) still comes from the server when the drag pauses.
// Between two draws the canvas keeps its pixels, so a draw redraws only the rectangle where the
// object was or is now.

const HOLE = [1, 0, 1];  // magenta

const VS_QUAD = `
attribute vec2 aXY;
varying vec2 vUV;
void main() { vUV = vec2(0.5 * aXY.x + 0.5, 0.5 - 0.5 * aXY.y); gl_Position = vec4(aXY, 0.0, 1.0); }`;
const FS_QUAD = `
uniform sampler2D uImage;
uniform sampler2D uMask;
uniform sampler2D uDepth;
uniform float uFar;
varying vec2 vUV;
void main() {
  bool hole = texture2D(uMask, vUV).r > 0.5;
  FRAG = hole ? vec4(${HOLE.map((v) => v.toFixed(1)).join(', ')}, 1.0) : vec4(texture2D(uImage, vUV).rgb, 1.0);
  SET_DEPTH(hole ? 1.0 : clamp(texture2D(uDepth, vUV).r / uFar, 0.0, 1.0))
}`;
const VS_POINTS = `
attribute vec3 aPos;    // offset from the pivot, three.js axes (x right, y up, z to the viewer)
attribute vec3 aColor;
attribute float aZ0;    // the sample's depth before the edit
uniform mat4 uM;        // the gizmo's pose (three.js matrixWorld)
uniform vec2 uTan;      // tan of half the horizontal and vertical fields of view
uniform float uFar;
uniform float uSize;    // canvas pixels one sample covers at its own depth, times the edit's scale
varying vec3 vColor;
void main() {
  vec4 w = uM * vec4(aPos, 1.0);
  float z = -w.z;  // depth in front of the camera
  vColor = aColor;
  if (z < 1e-4) { gl_Position = vec4(2.0, 2.0, 2.0, 1.0); gl_PointSize = 1.0; return; }
  gl_Position = vec4(w.x / (z * uTan.x), w.y / (z * uTan.y), 2.0 * min(z / uFar, 0.999) - 1.0, 1.0);
  gl_PointSize = max(1.0, ceil(uSize * aZ0 / z));
}`;
const FS_POINTS = `
varying vec3 vColor;
void main() { FRAG = vec4(vColor, 1.0); }`;

function header(gl2, fragment, fragDepth) {
  if (gl2) {
    const io = fragment ? '#define varying in\nout vec4 fragColor;\n#define FRAG fragColor\n' : '#define attribute in\n#define varying out\n';
    return `#version 300 es\nprecision highp float;\n#define texture2D texture\n${io}#define SET_DEPTH(d) gl_FragDepth = d;\n`;
  }
  if (!fragment) return 'precision highp float;\n';
  return fragDepth
    ? '#extension GL_EXT_frag_depth : enable\nprecision highp float;\n#define FRAG gl_FragColor\n#define SET_DEPTH(d) gl_FragDepthEXT = d;\n'
    : 'precision highp float;\n#define FRAG gl_FragColor\n#define SET_DEPTH(d)\n';
}

function program(gl, vs, fs) {
  const p = gl.createProgram();
  for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]]) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(`splat shader: ${gl.getShaderInfoLog(s)}`);
    gl.attachShader(p, s);
  }
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(`splat program: ${gl.getProgramInfoLog(p)}`);
  return p;
}

function decode(b64, Type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
}

/** The object's samples (offsets from the pivot, colours, depths) and the background's depth grid. */
function sceneData(cloud) {
  const pos = decode(cloud.positions, Float32Array);
  const col = decode(cloud.colors, Uint8Array);
  const obj = decode(cloud.object, Uint8Array);
  const pivot = cloud.pivot || [0, 0, 0];
  const p = [], c = [], z0 = [];
  const depth = new Float32Array(cloud.count);
  let far = 0;
  for (let i = 0; i < cloud.count; i++) {
    depth[i] = -pos[3 * i + 2];
    far = Math.max(far, depth[i]);
    if (!obj[i]) continue;
    p.push(pos[3 * i] - pivot[0], pos[3 * i + 1] - pivot[1], pos[3 * i + 2] - pivot[2]);
    c.push(col[3 * i] / 255, col[3 * i + 1] / 255, col[3 * i + 2] / 255);
    z0.push(depth[i]);
  }
  return { pos: new Float32Array(p), color: new Float32Array(c), z0: new Float32Array(z0), n: z0.length, depth, far: 4 * far };
}

/** The bounding box [x0, y0, z0, x1, y1, z1] of the object's samples (offsets from the pivot). */
function localBox(pos) {
  const b = [Infinity, Infinity, Infinity, -Infinity, -Infinity, -Infinity];
  for (let i = 0; i < pos.length; i += 3) {
    for (let k = 0; k < 3; k++) { b[k] = Math.min(b[k], pos[i + k]); b[k + 3] = Math.max(b[k + 3], pos[i + k]); }
  }
  return b;
}

const unite = (a, b) => [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];

export class Splat {
  /** @param {HTMLCanvasElement} canvas drawn at the session image's size (CSS scales it) */
  constructor(canvas) {
    this.canvas = canvas;
    const opts = { antialias: false, depth: true, alpha: false, preserveDrawingBuffer: true };
    this.gl = canvas.getContext('webgl2', opts);
    this.kind = this.gl ? 'webgl2' : null;
    if (!this.gl) {
      this.gl = canvas.getContext('webgl', opts);
      this.kind = this.gl ? 'webgl' : null;
    }
    if (!this.gl) {
      this.ctx2d = canvas.getContext('2d');
      this.kind = this.ctx2d ? '2d' : 'none';
    } else {
      this.initGL();
    }
    this.data = null;
  }

  initGL() {
    const gl = this.gl, gl2 = this.kind === 'webgl2';
    this.fragDepth = gl2 || Boolean(gl.getExtension('EXT_frag_depth'));
    this.quad = program(gl, header(gl2, false) + VS_QUAD, header(gl2, true, this.fragDepth) + FS_QUAD);
    this.points = program(gl, header(gl2, false) + VS_POINTS, header(gl2, true) + FS_POINTS);
    this.quadBuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.quadBuf);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    this.buffers = { aPos: gl.createBuffer(), aColor: gl.createBuffer(), aZ0: gl.createBuffer() };
    this.tex = { image: gl.createTexture(), mask: gl.createTexture(), depth: gl.createTexture() };
  }

  texture(unit, tex, upload) {
    const gl = this.gl;
    gl.activeTexture(gl.TEXTURE0 + unit);
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    upload();
    for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.NEAREST], [gl.TEXTURE_MAG_FILTER, gl.NEAREST],
      [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) gl.texParameteri(gl.TEXTURE_2D, k, v);
  }

  /**
   * A new image, object mask and point cloud.
   * @param {HTMLImageElement} image the session image (decoded)
   * @param {HTMLImageElement} mask the object mask (decoded; white = object)
   * @param {object} cloud the session's PointCloud (GET /api/sessions/{id}/points)
   */
  setScene(image, mask, cloud, width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    const d = sceneData(cloud);
    this.data = { ...d, cloud, width, height, box: localBox(d.pos), z0max: d.z0.reduce((a, v) => Math.max(a, v), 0) };
    this.lastRect = null;  // the next draw is a whole one
    if (this.kind === '2d') return this.setScene2d(image, mask, d, width, height);
    if (!this.gl) return;
    const gl = this.gl;
    this.texture(0, this.tex.image, () => gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, image));
    this.texture(1, this.tex.mask, () => gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, mask));
    if (this.kind === 'webgl2') {
      this.texture(2, this.tex.depth, () => gl.texImage2D(gl.TEXTURE_2D, 0, gl.R32F, cloud.grid_width, cloud.grid_height,
        0, gl.RED, gl.FLOAT, d.depth));
    } else {  // no float textures needed: WebGL1 draws without occlusion by the background
      this.texture(2, this.tex.depth, () => gl.texImage2D(gl.TEXTURE_2D, 0, gl.LUMINANCE, 1, 1, 0, gl.LUMINANCE,
        gl.UNSIGNED_BYTE, new Uint8Array([0])));
    }
    for (const [name, arr] of [['aPos', d.pos], ['aColor', d.color], ['aZ0', d.z0]]) {
      gl.bindBuffer(gl.ARRAY_BUFFER, this.buffers[name]);
      gl.bufferData(gl.ARRAY_BUFFER, arr, gl.STATIC_DRAW);
    }
  }

  attrib(prog, name, buf, size) {
    const gl = this.gl, loc = gl.getAttribLocation(prog, name);
    if (loc < 0) return;
    gl.bindBuffer(gl.ARRAY_BUFFER, buf);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, size, gl.FLOAT, false, 0, 0);
  }

  /**
   * Draw the object moved by the gizmo.
   * @param {ArrayLike<number>} matrix the gizmo's matrixWorld (16 numbers, column-major)
   * @param {number} scale the edit's uniform scale
   * @param {boolean} sync wait for the GPU (a 1-pixel read) so timings include the drawing itself
   */
  draw(matrix, scale, sync = false) {
    const d = this.data;
    if (!d) return;
    const c = d.cloud;
    const tanV = Math.tan((c.vertical_fov_deg * Math.PI) / 360);
    const size = c.stride * scale * (this.canvas.width / d.width);
    if (this.kind === '2d') return this.draw2d(matrix, [tanV * c.aspect, tanV], size);
    const gl = this.gl;
    if (!gl) return;
    // the canvas keeps its pixels between draws: only where the object was or is now is redrawn
    const rect = this.objectRect(matrix, [tanV * c.aspect, tanV], size);
    const region = rect && this.lastRect ? unite(rect, this.lastRect) : null;
    this.lastRect = rect;
    if (region) {
      gl.enable(gl.SCISSOR_TEST);
      gl.scissor(region[0], region[1], region[2] - region[0], region[3] - region[1]);
    }
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.enable(gl.DEPTH_TEST);
    gl.depthFunc(gl.LEQUAL);  // holes sit at the far plane (1.0), the cleared depth
    gl.clearColor(0, 0, 0, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.useProgram(this.quad);
    this.attrib(this.quad, 'aXY', this.quadBuf, 2);
    for (const [i, name] of ['uImage', 'uMask', 'uDepth'].entries()) {
      gl.activeTexture(gl.TEXTURE0 + i);
      gl.bindTexture(gl.TEXTURE_2D, this.tex[['image', 'mask', 'depth'][i]]);
      gl.uniform1i(gl.getUniformLocation(this.quad, name), i);
    }
    gl.uniform1f(gl.getUniformLocation(this.quad, 'uFar'), d.far);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    if (d.n) {
      const p = this.points;
      gl.useProgram(p);
      this.attrib(p, 'aPos', this.buffers.aPos, 3);
      this.attrib(p, 'aColor', this.buffers.aColor, 3);
      this.attrib(p, 'aZ0', this.buffers.aZ0, 1);
      gl.uniformMatrix4fv(gl.getUniformLocation(p, 'uM'), false, new Float32Array(matrix));
      gl.uniform2f(gl.getUniformLocation(p, 'uTan'), tanV * c.aspect, tanV);
      gl.uniform1f(gl.getUniformLocation(p, 'uFar'), d.far);
      gl.uniform1f(gl.getUniformLocation(p, 'uSize'), size);
      gl.drawArrays(gl.POINTS, 0, d.n);
    }
    gl.disable(gl.SCISSOR_TEST);
    this.redrawn = region ? ((region[2] - region[0]) * (region[3] - region[1])) / (this.canvas.width * this.canvas.height) : 1;
    if (sync) gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
  }

  /** The canvas rectangle [x0, y0, x1, y1] (pixels, y up) that the moved object covers, or null. */
  objectRect(m, tan, size) {
    const d = this.data, b = d.box, w = this.canvas.width, h = this.canvas.height;
    if (!d.n) return null;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity, zmin = Infinity;
    for (let i = 0; i < 8; i++) {
      const x = b[i & 1 ? 3 : 0], y = b[i & 2 ? 4 : 1], z = b[i & 4 ? 5 : 2];
      const depth = -(m[2] * x + m[6] * y + m[10] * z + m[14]);
      if (depth < 1e-4) return null;  // partly behind the camera: draw it all
      const nx = (m[0] * x + m[4] * y + m[8] * z + m[12]) / (depth * tan[0]);
      const ny = (m[1] * x + m[5] * y + m[9] * z + m[13]) / (depth * tan[1]);
      x0 = Math.min(x0, nx); x1 = Math.max(x1, nx); y0 = Math.min(y0, ny); y1 = Math.max(y1, ny);
      zmin = Math.min(zmin, depth);
    }
    const pad = Math.ceil((size * d.z0max) / zmin) + 2;  // the largest point's half size, and then some
    const r = [Math.floor(((x0 + 1) / 2) * w) - pad, Math.floor(((y0 + 1) / 2) * h) - pad,
      Math.ceil(((x1 + 1) / 2) * w) + pad, Math.ceil(((y1 + 1) / 2) * h) + pad];
    return [Math.max(0, r[0]), Math.max(0, r[1]), Math.min(w, r[2]), Math.min(h, r[3])];
  }

  // ---------------------------------------------------------------- 2D canvas fallback
  setScene2d(image, mask, d, width, height) {
    const ctx = this.ctx2d;
    ctx.drawImage(image, 0, 0, width, height);
    const base = ctx.getImageData(0, 0, width, height);
    ctx.drawImage(mask, 0, 0, width, height);
    const m = ctx.getImageData(0, 0, width, height).data;
    for (let i = 0; i < m.length; i += 4) {
      if (m[i] > 127) for (let k = 0; k < 3; k++) base.data[i + k] = 255 * HOLE[k];
    }
    this.base = base;
  }

  draw2d(matrix, tan, size) {
    const ctx = this.ctx2d, d = this.data, m = matrix, w = this.canvas.width, h = this.canvas.height;
    ctx.putImageData(this.base, 0, 0);
    const pts = [];
    for (let i = 0; i < d.n; i++) {
      const x = d.pos[3 * i], y = d.pos[3 * i + 1], z = d.pos[3 * i + 2];
      const wx = m[0] * x + m[4] * y + m[8] * z + m[12];
      const wy = m[1] * x + m[5] * y + m[9] * z + m[13];
      const depth = -(m[2] * x + m[6] * y + m[10] * z + m[14]);
      if (depth > 1e-4) pts.push([depth, wx / (depth * tan[0]), wy / (depth * tan[1]), i]);
    }
    pts.sort((a, b) => b[0] - a[0]);  // far to near: nearer samples are drawn last
    for (const [depth, nx, ny, i] of pts) {
      const s = Math.max(1, Math.ceil((size * d.z0[i]) / depth));
      const c = d.color.subarray(3 * i, 3 * i + 3);
      ctx.fillStyle = `rgb(${255 * c[0]},${255 * c[1]},${255 * c[2]})`;
      ctx.fillRect(((nx + 1) / 2) * w - s / 2, ((1 - ny) / 2) * h - s / 2, s, s);
    }
  }
}
