// onnxruntime-web (vendored, served by the app) and the model's graphs: load once, run many times.
//
// The graphs are the ones the server's ONNX backend runs (smis/onnx_format.py): with the pair
// generator-maps.onnx (labels, z -> image and every CG-Norm's scale / shift map) and
// generator-render.onnx (z, those maps -> image), a new mask runs the first and keeps its maps, and a
// re-roll on the same mask runs only the second; with generator.onnx alone every call runs it. A model
// with a local enhancer also has generator-preview.onnx: the same inputs (the full-size labels, the same
// codes) -> the global generator's smaller image (model.preview), what live painting draws while the brush moves.
//
// Which runtime: where the browser offers a WebGPU adapter (a hardware one; and WebAssembly JSPI, which
// onnxruntime-web's WebGPU build needs), the sessions are created with executionProviders ['webgpu', 'wasm']
// from that build (ort.jspi.min.mjs); its first run of each graph is checked against the CPU kernels of the
// same runtime (a session with ['wasm'] only, the same inputs): an image off by more than WEBGPU_TOLERANCE,
// or any WebGPU error, moves every graph to those CPU kernels for good, and ``webgpuReason`` says why.
// Elsewhere the WASM-only build (ort.wasm.min.mjs) runs them. The graphs are fp32 on both.

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

/** What the page may try: 'auto' (WebGPU on a hardware adapter, else WebAssembly), 'webgpu' (any adapter, a
 * software fallback too: for tests and benchmarks), 'wasm'. */
export const RUNTIMES = ['auto', 'webgpu', 'wasm'];

/** Largest difference (of 255) allowed between WebGPU's image and the CPU kernels' on a graph's first run (the
 * same fp32 graph: SwiftShader's WebGPU gave 0-1; a broken kernel is far off). */
export const WEBGPU_TOLERANCE = 8;

function message(err) {
  return String((err && err.message) || err).slice(0, 200);
}

/** A WebGPU adapter this page may use ({ adapter }), or why not ({ reason }, in words for the visitor). */
export async function webgpuAdapter(want = 'auto') {
  if (want === 'wasm') return { reason: 'WebAssembly was asked for (?runtime=wasm)' };
  if (!globalThis.navigator || !navigator.gpu) return { reason: 'this browser has no WebGPU' };
  if (!('Suspending' in WebAssembly)) {
    return { reason: "this browser's WebAssembly has no JSPI, which onnxruntime-web's WebGPU build needs" };
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (err) {
    return { reason: `asking for a WebGPU adapter failed (${message(err)})` };
  }
  if (!adapter) return { reason: 'this browser offers no WebGPU adapter' };
  const software = adapter.info ? adapter.info.isFallbackAdapter : adapter.isFallbackAdapter;
  if (software && want !== 'webgpu') {
    return { reason: 'its only WebGPU adapter is a software one (slower than WebAssembly)' };
  }
  return { adapter };
}

function largestDifference(a, b) {
  if (a.length !== b.length) return 255;
  let most = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (d > most) most = d;
  }
  return most;
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
  /** ``runtime``: one of RUNTIMES. WebGPU where it may (see webgpuAdapter), else WebAssembly. */
  static async load(info, infoUrl, { runtime = 'auto' } = {}) {
    const url = (rel) => new URL(rel, infoUrl).href;
    const graphs = {};
    for (const [kind, rel] of Object.entries(info.graphs)) {
      graphs[kind] = await fetchBytes(url(rel), `the ${kind} graph`);
    }
    let reason = 'this server has no WebGPU build of onnxruntime-web';
    if (info.runtime.webgpu) {
      const gpu = await webgpuAdapter(runtime);
      reason = gpu.reason;
      if (gpu.adapter) {
        let sessions = {};
        try {
          const ort = await ModelRuntime.importRuntime(url(info.runtime.webgpu), url(info.runtime.folder));
          sessions = await ModelRuntime.createSessions(ort, graphs, ['webgpu', 'wasm']);
          // onnxruntime-web drops a provider that does not start (with a console warning): check it started
          if (!ort.env.webgpu.device) throw new Error('its WebGPU provider did not start');
          return new ModelRuntime(ort, sessions, info, { backend: 'webgpu', graphs });
        } catch (err) {
          await Promise.all(Object.values(sessions).map((s) => s.release().catch(() => {})));
          reason = `WebGPU did not start here (${message(err)})`;
        }
      }
    }
    const ort = await ModelRuntime.importRuntime(url(info.runtime.module), url(info.runtime.folder));
    const sessions = await ModelRuntime.createSessions(ort, graphs, ['wasm']);
    return new ModelRuntime(ort, sessions, info, { backend: 'wasm', webgpuReason: reason });
  }

  static async importRuntime(moduleUrl, folderUrl) {
    const ort = await import(moduleUrl);
    ort.env.wasm.wasmPaths = folderUrl;
    // Several threads need SharedArrayBuffer, i.e. a cross-origin isolated page.
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated
      ? Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1)) : 1;
    ort.env.wasm.proxy = false;
    return ort;
  }

  static async createSessions(ort, graphs, executionProviders) {
    const sessions = {};
    for (const [kind, bytes] of Object.entries(graphs)) {
      sessions[kind] = await ort.InferenceSession.create(bytes, { executionProviders, graphOptimizationLevel: 'all' });
    }
    return sessions;
  }

  constructor(ort, sessions, info, { backend = 'wasm', graphs = null, webgpuReason = '' } = {}) {
    this.ort = ort;
    this.sessions = sessions;
    this.model = info.model;
    this.version = info.runtime.version;
    this.threads = ort.env.wasm.numThreads;
    this.backend = backend;  // 'webgpu' | 'wasm': what runs the graphs now
    this.webgpuReason = webgpuReason;  // why not WebGPU ("" while it runs)
    this.graphs = graphs;  // the graphs' bytes while on WebGPU (for the check and the move to the CPU kernels)
    this.checks = {};  // WebGPU's first run of each graph: its largest difference from the CPU kernels
    this.onchange = null;  // called after a move from WebGPU to WebAssembly
    this.lastLabels = null;  // the mask whose maps are kept
    this.maps = null;
    this.busy = Promise.resolve();
  }

  /** ``session(kind).run(feeds, names)`` on the runtime in use; on WebGPU the first run of each graph is checked
   * against the CPU kernels, and a mismatch or an error moves every graph to them (this call's answer included). */
  async call(kind, feeds, names) {
    if (this.backend !== 'webgpu') return this.sessions[kind].run(feeds, names);
    let out;
    try {
      out = await this.sessions[kind].run(feeds, names);
    } catch (err) {
      await this.toWasm(`WebGPU failed while running (${message(err)})`);
      return this.sessions[kind].run(feeds, names);
    }
    if (kind in this.checks) return out;
    const cpu = await this.ort.InferenceSession.create(this.graphs[kind],
      { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
    const ref = await cpu.run(feeds, names);
    const diff = largestDifference(out.image_uint8.data, ref.image_uint8.data);
    this.checks[kind] = diff;
    if (diff <= WEBGPU_TOLERANCE) {
      await cpu.release();
      return out;
    }
    await this.toWasm(`WebGPU's image differed from WebAssembly's by ${diff} of 255`, { [kind]: cpu });
    return ref;
  }

  /** Every graph on the CPU kernels from now on (the same runtime's 'wasm' provider); ``ready``: sessions made. */
  async toWasm(reason, ready = {}) {
    const sessions = { ...ready };
    for (const [kind, bytes] of Object.entries(this.graphs)) {
      if (!sessions[kind]) {
        sessions[kind] = await this.ort.InferenceSession.create(bytes,
          { executionProviders: ['wasm'], graphOptimizationLevel: 'all' });
      }
    }
    const old = this.sessions;
    Object.assign(this, { sessions, backend: 'wasm', webgpuReason: reason, graphs: null });
    await Promise.all(Object.values(old).map((s) => s.release().catch(() => {})));
    if (this.onchange) this.onchange(reason);
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
      const out = await this.call('generator', { labels: this.labelTensor(labels), z }, ['image_uint8']);
      return out.image_uint8.data;
    }
    if (!sameBytes(labels, this.lastLabels)) {
      const names = this.sessions.generator_maps.outputNames.filter((n) => n !== 'image');
      const out = await this.call('generator_maps', { labels: this.labelTensor(labels), z }, names);
      this.maps = Object.fromEntries(names.filter((n) => n !== 'image_uint8').map((n) => [n, out[n]]));
      this.lastLabels = labels.slice();
      return out.image_uint8.data;
    }
    const out = await this.call('generator_render', { z, ...this.maps }, ['image_uint8']);
    return out.image_uint8.data;
  }

  /** The preview: the same labels (full size) and codes as ``run`` -> Uint8Array (h * w * 3) RGB at
   * ``model.preview`` ([h, w]), the global generator's image. Queued with ``run`` (one call at a time); it
   * leaves the kept maps alone. */
  preview(labels, codes) {
    if (!this.hasPreview) return Promise.reject(new Error('this model has no preview graph'));
    const next = this.busy.then(async () => {
      const out = await this.call('generator_preview', { labels: this.labelTensor(labels), z: this.latent(codes) },
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
