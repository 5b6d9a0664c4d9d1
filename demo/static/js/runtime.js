// onnxruntime-web (vendored, served by the app) and the model's graphs: load once, run many times.
//
// The graphs are the ones the server's ONNX backend runs (smis/onnx_format.py): with the pair
// generator-maps.onnx (labels, z -> image and every CG-Norm's scale / shift map) and
// generator-render.onnx (z, those maps -> image), a new mask runs the first and keeps its maps, and a
// re-roll on the same mask runs only the second; with generator.onnx alone every call runs it. A model
// with a local enhancer also has generator-preview.onnx: the same inputs (the full-size labels, the same
// codes) -> the global generator's smaller image (model.preview), what live painting draws while the brush moves.

// The smallest module with a SIMD instruction (i8x16.splat): onnxruntime-web's WASM build needs SIMD.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10,
  1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

/** Why this browser cannot run the WASM runtime ("" when it can). */
export function missingFeature() {
  if (typeof WebAssembly !== 'object' || typeof WebAssembly.instantiate !== 'function') {
    return 'this browser has no WebAssembly';
  }
  try {
    if (!WebAssembly.validate(SIMD_PROBE)) return 'this browser has no WebAssembly SIMD';
  } catch (err) {
    return 'this browser has no WebAssembly SIMD';
  }
  return '';
}

async function fetchBytes(url, what) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${what} did not load (HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

function sameBytes(a, b) {
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The runtime and the sessions of one model, described by /smis/model.json (``info``, fetched from
 * ``infoUrl``; its URLs are relative to it). */
export class ModelRuntime {
  static async load(info, infoUrl) {
    const url = (rel) => new URL(rel, infoUrl).href;
    const ort = await import(url(info.runtime.module));
    ort.env.wasm.wasmPaths = url(info.runtime.folder);
    // Several threads need SharedArrayBuffer, i.e. a cross-origin isolated page.
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated
      ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    ort.env.wasm.proxy = false;
    const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all' };
    const sessions = {};
    for (const [kind, rel] of Object.entries(info.graphs)) {
      const bytes = await fetchBytes(url(rel), `the ${kind} graph`);
      sessions[kind] = await ort.InferenceSession.create(bytes, options);
    }
    return new ModelRuntime(ort, sessions, info);
  }

  constructor(ort, sessions, info) {
    this.ort = ort;
    this.sessions = sessions;
    this.model = info.model;
    this.version = info.runtime.version;
    this.threads = ort.env.wasm.numThreads;
    this.lastLabels = null;  // the mask whose maps are kept
    this.maps = null;
    this.busy = Promise.resolve();
  }

  get cachesMasks() {
    return Boolean(this.sessions.generator_maps && this.sessions.generator_render);
  }

  /** Whether the model has the preview graph (a local enhancer's global generator). */
  get hasPreview() {
    return Boolean(this.sessions.generator_preview);
  }

  /** labels: Uint8Array (H * W class ids), codes: Float32Array (C * z * h * w) -> Uint8Array (H * W * 3) RGB.
   * Calls run one after the other (a session runs one call at a time). */
  run(labels, codes) {
    const next = this.busy.then(() => this._run(labels, codes));
    this.busy = next.catch(() => {});
    return next;
  }

  async _run(labels, codes) {
    const z = this.latent(codes);
    if (!this.cachesMasks) {
      const out = await this.sessions.generator.run({ labels: this.labelTensor(labels), z }, ['image_uint8']);
      return out.image_uint8.data;
    }
    if (!sameBytes(labels, this.lastLabels)) {
      const session = this.sessions.generator_maps;
      const names = session.outputNames.filter((n) => n !== 'image');
      const out = await session.run({ labels: this.labelTensor(labels), z }, names);
      this.maps = Object.fromEntries(names.filter((n) => n !== 'image_uint8').map((n) => [n, out[n]]));
      this.lastLabels = labels.slice();
      return out.image_uint8.data;
    }
    const out = await this.sessions.generator_render.run({ z, ...this.maps }, ['image_uint8']);
    return out.image_uint8.data;
  }

  /** The preview: the same labels (full size) and codes as ``run`` -> Uint8Array (h * w * 3) RGB at
   * ``model.preview`` ([h, w]), the global generator's image. Queued with ``run`` (one call at a time); it
   * leaves the kept maps alone. */
  preview(labels, codes) {
    if (!this.hasPreview) return Promise.reject(new Error('this model has no preview graph'));
    const next = this.busy.then(async () => {
      const out = await this.sessions.generator_preview.run({ labels: this.labelTensor(labels), z: this.latent(codes) },
        ['image_uint8']);
      return out.image_uint8.data;
    });
    this.busy = next.catch(() => {});
    return next;
  }

  latent(codes) {
    const { num_classes: c, z_channels: zc, grid } = this.model;
    return new this.ort.Tensor('float32', codes, [1, c * zc, grid[0], grid[1]]);
  }

  labelTensor(labels) {
    const ids = new BigInt64Array(labels.length);
    for (let i = 0; i < labels.length; i++) ids[i] = BigInt(labels[i]);
    return new this.ort.Tensor('int64', ids, [1, 1, this.model.height, this.model.width]);
  }

  /** Forget the kept maps (the next call runs the maps graph, as for a new mask). */
  forgetMask() {
    this.lastLabels = null;
    this.maps = null;
  }
}

/** One timed round, in ms: a generate (a new mask: the maps graph, or the generator), a re-roll (the
 * same mask, other codes: the render graph) and, where the model has one, a preview frame (the preview
 * graph: what live painting draws while the brush moves; else null); with the generated image (RGB bytes).
 * For python -m devtools.browser_bench, which runs warm-up rounds first and alternates with the server. */
export async function timeRound(runtime, labels, codes) {
  runtime.forgetMask();
  let t0 = performance.now();
  const image = await runtime.run(labels, codes);
  const generate = performance.now() - t0;
  t0 = performance.now();
  await runtime.run(labels, codes.map((v) => -v));
  const reroll = performance.now() - t0;
  let preview = null;
  if (runtime.hasPreview) {
    t0 = performance.now();
    await runtime.preview(labels, codes);
    preview = performance.now() - t0;
  }
  return { generate, reroll, preview, image };
}
