// In-browser inference on the demo page: the "Run in your browser" switch, its note, and the clicks.
//
// With the switch on and the model loaded, a click on Generate / Re-roll / Re-roll all unlocked /
// Same codes, new mask is taken before Gradio sees it and given to the matching hidden button
// (#browser-generate ...): the server makes the job without running the model (demo/browser.py),
// render() runs it here, and the server saves the PNG. Whenever this browser cannot (no WebAssembly
// SIMD, a runtime or graph that does not load, an error while running), the note says why and the
// click goes to the server's own event: nothing is lost.
//
// Live painting ("Live: the result follows the brush"): after each stroke on the canvas the page
// clicks #browser-live-run (the canvas with the current result's codes, rendered here). One live job
// runs at a time; strokes made meanwhile leave one pending job that reads the canvas when it starts,
// so the newest stroke wins and nothing queues up. A model with a local enhancer (the preview graph)
// keeps the brush live at its larger size: each live job first draws the preview (the global
// generator's smaller image, scaled up over the result), and only once the brush has rested for
// LIVE_QUIET_MS renders the full image, which the server keeps (#browser-live-keep); a stroke meanwhile
// skips the full image, and its own job (the pending one) previews next. A job that drew only the preview
// ends in the page: the server heard of it once, for the job.
//
// The runtime (runtime.js): WebGPU where the browser offers an adapter (its first run of each graph checked against
// WebAssembly), else WebAssembly; the note names the one in use and, on WebAssembly, why not WebGPU. The page's
// address may ask for one: ?runtime=wasm, or ?runtime=webgpu (a software adapter too, for tests).
//
// Drag to morph (Style morphing tab): "Load A and B" hands the page the mask and both ends' codes;
// every position of the slider is then rendered here (the render graph alone: the mask is kept) and
// drawn on #browser-morph-canvas, the newest position winning while a frame renders.

import { ModelRuntime, RUNTIMES, missingFeature } from './runtime.js';
import { codesToDict, jobCodes, jobLabels, lerpCodes, rgbToCanvas, rgbToImageData, rgbToPngBase64 } from './tensors.js';

/** How long the brush must rest (no stroke under way or pending) before live painting renders the full image
 * of a model with a preview graph. */
const LIVE_QUIET_MS = 400;

/** Server button -> the hidden button of its browser job. */
const BROWSER_BUTTONS = {
  generate: 'browser-generate',
  reroll: 'browser-reroll',
  'reroll-unlocked': 'browser-reroll-unlocked',
  'apply-mask-edit': 'browser-mask-edit',
};

/** What changes the canvas: the drawing surface and the editor's undo / redo / clear. */
const CANVAS_EDITS = "#canvas canvas, #canvas button[aria-label='Undo'], #canvas button[aria-label='Redo'], "
  + "#canvas button[aria-label='Clear canvas']";

class BrowserInference {
  constructor(infoUrl) {
    this.infoUrl = infoUrl;
    this.state = 'loading';  // loading | ready | off
    this.reason = '';
    this.runtime = null;
    this.version = '';
    this.renders = 0;
    this.drawing = false;  // a pointer went down on the canvas and is not up yet
    this.liveBusy = false;
    this.livePending = false;
    this.liveTimer = null;
    this.lastEdit = 0;  // performance.now() of the last pointer down / up on the canvas
    this.previews = 0;  // live preview frames drawn (models with a preview graph)
    this.previewMs = null;  // the last one's model time
    this.liveFull = false;  // the running live job rendered the full image
    this.morph = null;  // { labels, a, b, t, rgb, job } once A and B are loaded
    this.morphBusy = false;
    this.morphNext = null;
    this.morphFrames = 0;
  }

  async start() {
    this.show();
    document.addEventListener('click', (event) => this.intercept(event), true);
    document.addEventListener('change', (event) => {
      if (event.target.closest && event.target.closest('#browser-run')) this.show();
      if (event.target.closest && event.target.closest('#browser-run, #browser-live')) this.hidePreview();
    }, true);
    document.addEventListener('input', (event) => {
      if (event.target.closest && event.target.closest('#browser-morph-t')) this.morphTo(Number(event.target.value));
    }, true);
    document.addEventListener('pointerdown', (event) => {
      this.drawing = Boolean(event.target.closest && event.target.closest(CANVAS_EDITS));
      if (this.drawing) this.lastEdit = performance.now();
    }, true);
    document.addEventListener('pointerup', () => {
      if (this.drawing) {
        this.drawing = false;
        this.lastEdit = performance.now();
        this.strokeEnded();
      }
    }, true);
    const missing = missingFeature();
    if (missing) return this.off(missing);
    let info;
    try {
      const response = await fetch(this.infoUrl);
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      info = await response.json();
    } catch (err) {
      return this.off(`the page could not ask the server for the model (${err.message || err})`);
    }
    if (!info.available) return this.off(info.reason);
    this.version = info.runtime.version;
    this.show();
    const asked = new URLSearchParams(globalThis.location ? location.search : '').get('runtime');
    try {
      const runtime = RUNTIMES.includes(asked) ? asked : 'auto';
      this.runtime = await ModelRuntime.load(info, this.infoUrl, { runtime });
      this.runtime.onchange = () => this.show();  // WebGPU gave way to WebAssembly
    } catch (err) {
      return this.off(`the runtime or the model did not load here (${String(err.message || err).slice(0, 200)})`);
    }
    this.state = 'ready';
    this.show();
  }

  wanted() {
    const box = document.querySelector('#browser-run input');
    return box ? box.checked : true;
  }

  active() {
    return this.state === 'ready' && this.wanted();
  }

  liveWanted() {
    const box = document.querySelector('#browser-live input');
    return Boolean(box && box.checked);
  }

  /** After a stroke (or any edit on the canvas): one live job now, or one pending after the running one. */
  strokeEnded() {
    if (!this.active() || !this.liveWanted()) return;
    if (this.liveBusy) {
      this.livePending = true;
      return;
    }
    this.liveBusy = true;
    // the editor commits its stroke just after pointerup; a job that never reports back is given up on
    setTimeout(() => document.getElementById('browser-live-run')?.click(), 150);
    clearTimeout(this.liveTimer);
    this.liveTimer = setTimeout(() => this.liveDone(), 30000);
  }

  /** A live job's answer: the full image goes to the server to keep (#browser-live-keep, whose chain ends in
   * liveDone); a job that drew only the preview, or fell back to the server, ends here. */
  liveRendered(rendered) {
    const keep = rendered && document.getElementById('browser-live-keep');
    if (keep) keep.click();
    else this.liveDone();
  }

  /** The live job's chain ended (saved, refused or failed): start the pending one, if a stroke came. */
  liveDone() {
    clearTimeout(this.liveTimer);
    this.liveBusy = false;
    this.lives = (this.lives || 0) + 1;
    const shown = this.overlay && this.overlay.style.display !== 'none';
    if (this.liveFull || (shown && !this.livePending && !this.drawing)) {
      // the result shows the full image now (or nothing follows the preview): it goes once that is drawn
      this.hidePreviewWhenShown();
    }
    this.liveFull = false;
    if (this.livePending) {
      this.livePending = false;
      this.strokeEnded();
    }
  }

  /** Whether the brush rests: no stroke under way or pending for LIVE_QUIET_MS (false as soon as one comes). */
  async brushRests() {
    for (;;) {
      if (this.livePending || this.drawing || !this.liveWanted()) return false;
      const quiet = performance.now() - this.lastEdit;
      if (quiet >= LIVE_QUIET_MS) return true;
      await new Promise((resolve) => setTimeout(resolve, Math.min(50, LIVE_QUIET_MS - quiet)));
    }
  }

  /** The canvas drawn over the result image (same box, same object-fit): live previews, scaled up to the
   * model's size. Made on first use. */
  previewOverlay() {
    const host = document.getElementById('result');
    if (!host) return null;
    const { height, width } = this.runtime.model;
    if (!this.overlay || !this.overlay.isConnected) {
      this.overlay = Object.assign(document.createElement('canvas'), { id: 'browser-live-preview', width, height });
      this.overlay.style.cssText = 'position:absolute;z-index:5;pointer-events:none;object-fit:contain;display:none';
      if (getComputedStyle(host).position === 'static') host.style.position = 'relative';
      host.appendChild(this.overlay);
    }
    const target = host.querySelector('img') || host.querySelector('.image-container, .empty') || host;
    const r = target.getBoundingClientRect(), b = host.getBoundingClientRect();
    Object.assign(this.overlay.style, { left: `${r.left - b.left - host.clientLeft}px`,
      top: `${r.top - b.top - host.clientTop}px`, width: `${r.width}px`, height: `${r.height}px`, display: 'block' });
    return this.overlay;
  }

  /** Draw RGB bytes of ``size`` ([h, w]) over the result, scaled to the model's size (smoothly). */
  drawPreview(rgb, size) {
    const overlay = this.previewOverlay();
    if (!overlay) return;
    const ctx = overlay.getContext('2d');
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(rgbToCanvas(rgb, size[0], size[1]), 0, 0, overlay.width, overlay.height);
  }

  hidePreview() {
    clearInterval(this.hideTimer);
    if (this.overlay) this.overlay.style.display = 'none';
  }

  /** Hide the preview once the result image has changed and loaded (or after 3 s), so nothing flashes back. */
  hidePreviewWhenShown() {
    const img = () => document.querySelector('#result img');
    const before = this.overlaySrc;
    const t0 = performance.now();
    clearInterval(this.hideTimer);
    this.hideTimer = setInterval(() => {
      const shown = img() && img().getAttribute('src') !== before && img().complete;
      if (shown || performance.now() - t0 > 3000) this.hidePreview();
    }, 50);
  }

  off(reason) {
    this.state = 'off';
    this.reason = reason;
    const box = document.querySelector('#browser-run input');
    if (box && box.checked) box.click();  // Gradio's own value follows
    this.show();
  }

  show() {
    const note = document.querySelector('#browser-note-text');
    if (!note) return;
    let state = this.state, text;
    if (this.state === 'off') {
      text = `⚠️ Not running in your browser: ${this.reason}. Everything runs on the server.`;
    } else if (this.state === 'loading') {
      const runtime = this.version ? ` (onnxruntime-web ${this.version})` : '';
      text = `⏳ Loading the model into your browser${runtime}… until then the server runs it.`;
    } else if (this.wanted()) {
      const { threads, backend, webgpuReason } = this.runtime;
      const runtime = backend === 'webgpu' ? `onnxruntime-web ${this.version}, WebGPU`
        : `onnxruntime-web ${this.version}, WebAssembly, ${threads} thread${threads > 1 ? 's' : ''}; `
          + `not WebGPU: ${webgpuReason}`;
      const [ph, pw] = this.runtime.model.preview || [];
      const live = this.runtime.hasPreview ? ` (a ${ph}×${pw} preview while you paint, the full image when you pause)` : '';
      text = `✅ Generate, re-roll, live painting${live} and drag-to-morph run in your browser (${runtime}); `
        + 'the server reads your canvas, makes the codes and keeps the PNG. Mixing and photos run on the server.';
    } else {
      state = 'server';
      text = 'Everything runs on the server (tick the box to run generate and re-roll in your browser).';
    }
    note.textContent = text;
    note.dataset.state = state;
    note.dataset.runtime = this.state === 'ready' ? this.runtime.backend : '';
  }

  intercept(event) {
    const button = event.target.closest && event.target.closest('button');
    const job = button && BROWSER_BUTTONS[button.id];
    if (!job || !this.active()) return;
    const target = document.getElementById(job);
    if (!target) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    target.click();
  }

  /** Gradio calls this between the job and its saving: the job (JSON text) -> the same with the
   * rendered PNG (base64) and the time, or "" after handing the click to the server. */
  async render(jobText) {
    if (!jobText) return '';
    const job = JSON.parse(jobText);
    try {
      if (this.state !== 'ready') throw new Error(this.reason || 'the model is not loaded');
      const model = this.runtime.model;
      const labels = jobLabels(job, model);
      const codes = jobCodes(job, model);
      const preview = job.op === 'live' && this.runtime.hasPreview;
      if (preview) {  // the quick look first; the full image only once the brush rests
        clearInterval(this.hideTimer);
        const t0 = performance.now();
        const small = await this.runtime.preview(labels, codes);
        this.previewMs = performance.now() - t0;
        this.drawPreview(small, model.preview);
        this.previews += 1;
        if (!(await this.brushRests())) return '';  // a newer stroke's job previews next
      } else if (job.op !== 'live') {
        this.hidePreview();
      }
      const t0 = performance.now();
      const rgb = await this.runtime.run(labels, codes);
      const ms = performance.now() - t0;
      if (preview) {  // over the preview until the server's copy of it is on show
        this.drawPreview(rgb, [model.height, model.width]);
        this.overlaySrc = document.querySelector('#result img')?.getAttribute('src');
        this.liveFull = true;
      }
      const image = await rgbToPngBase64(rgb, model.height, model.width);
      this.renders += 1;
      return JSON.stringify({ ...job, image, ms, threads: this.runtime.threads, runtime: this.runtime.backend });
    } catch (err) {
      this.off(`running the model failed here (${String(err.message || err).slice(0, 200)})`);
      const server = document.getElementById(job.server_button);
      if (server) setTimeout(() => server.click(), 0);
      return '';
    }
  }
}

Object.assign(BrowserInference.prototype, {
  /** The morph's ends (a job from the server: mask, codes a and b); renders the slider's position. */
  async loadMorph(jobText) {
    if (!jobText || this.state !== 'ready') return;
    const job = JSON.parse(jobText);
    const model = this.runtime.model;
    this.morph = { job, labels: jobLabels(job, model), a: jobCodes({ codes: job.a }, model),
      b: jobCodes({ codes: job.b }, model), t: null, rgb: null };
    const slider = document.querySelector('#browser-morph-t input[type=range]');
    await this.morphTo(slider ? Number(slider.value) : 0);
  },

  /** Render the frame at ``t`` (0: A, 1: B); while one renders, only the newest position waits. */
  async morphTo(t) {
    if (!this.morph || !(t >= 0 && t <= 1)) return;
    if (this.morphBusy) {
      this.morphNext = t;
      return;
    }
    this.morphBusy = true;
    try {
      for (let next = t; next !== null; next = this.morphNext, this.morphNext = null) {
        const codes = lerpCodes(this.morph.a, this.morph.b, next);
        const t0 = performance.now();
        const rgb = await this.runtime.run(this.morph.labels, codes);
        Object.assign(this.morph, { t: next, codes, rgb, ms: performance.now() - t0 });
        this.drawMorph(rgb);
        this.morphFrames += 1;
      }
    } catch (err) {
      this.off(`running the model failed here (${String(err.message || err).slice(0, 200)})`);
    } finally {
      this.morphBusy = false;
    }
  },

  drawMorph(rgb) {
    const canvas = document.getElementById('browser-morph-canvas');
    if (!canvas) return;
    const { height, width } = this.runtime.model;
    canvas.getContext('2d').putImageData(rgbToImageData(rgb, height, width), 0, 0);
  },

  /** The frame on show as a rendered answer (its codes and PNG) for the server to keep, or "". */
  async morphFrame() {
    const m = this.morph;
    if (!m || !m.rgb) return '';
    while (this.morphBusy) await new Promise((resolve) => setTimeout(resolve, 20));
    const { height, width } = this.runtime.model;
    const image = await rgbToPngBase64(m.rgb, height, width);
    return JSON.stringify({ op: 'morph', seed: null, classes: [], height, width, labels: m.job.labels, t: m.t,
      codes: codesToDict(m.codes, m.job.a), image, ms: m.ms, threads: this.runtime.threads,
      runtime: this.runtime.backend });
  },
});

/** Start once per page; ``infoUrl`` is the app's /smis/model.json. */
export function start(infoUrl) {
  if (!globalThis.smisBrowser) {
    globalThis.smisBrowser = new BrowserInference(infoUrl);
    globalThis.smisBrowser.start();
  }
  return globalThis.smisBrowser;
}
