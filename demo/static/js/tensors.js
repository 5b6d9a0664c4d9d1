// A job from the server (demo/browser.py: BrowserJobs) -> the generator's inputs; its output -> a PNG.
//
// Job: labels = uint8 class ids (H * W, row-major, base64); codes = smis.codes.ClassCodes.to_dict()
// (float32 little-endian, shape (classes, z, h, w), base64). Class c's codes are channels
// [z*c, z*c + z) of the generator's z (smis/onnx_format.py, latent layout), which is exactly that
// array's memory order, so the codes are the z tensor as they are.

export function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

export function toBase64(bytes) {
  let raw = '';
  for (let i = 0; i < bytes.length; i += 0x8000) raw += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(raw);
}

/** The class-id map of a job, checked against the model: Uint8Array (H * W). */
export function jobLabels(job, model) {
  const labels = fromBase64(job.labels);
  if (job.height !== model.height || job.width !== model.width || labels.length !== model.height * model.width) {
    throw new Error(`the mask is ${job.height}x${job.width}, the model ${model.height}x${model.width}`);
  }
  return labels;
}

/** The codes of a job as the generator's z: Float32Array (classes * z * h * w). */
export function jobCodes(job, model) {
  const codes = job.codes;
  const want = [model.num_classes, model.z_channels, ...model.grid];
  if (codes.format !== 'smis-codes/1' || codes.shape.join() !== want.join()) {
    throw new Error(`codes of shape ${codes.shape} do not fit this model (${want})`);
  }
  const bytes = fromBase64(codes.float32_le_base64);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const z = new Float32Array(bytes.byteLength / 4);
  for (let i = 0; i < z.length; i++) z[i] = view.getFloat32(4 * i, true);
  return z;
}

/** RGB bytes (H * W * 3, the graph's image_uint8) -> opaque ImageData for a canvas. */
export function rgbToImageData(rgb, height, width) {
  const rgba = new Uint8ClampedArray(height * width * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i];
    rgba[j + 1] = rgb[i + 1];
    rgba[j + 2] = rgb[i + 2];
    rgba[j + 3] = 255;
  }
  return new ImageData(rgba, width, height);
}

/** RGB bytes (H * W * 3, the graph's image_uint8) -> a canvas of that size holding them (to draw or encode). */
export function rgbToCanvas(rgb, height, width) {
  const canvas = typeof OffscreenCanvas === 'function'
    ? new OffscreenCanvas(width, height) : Object.assign(document.createElement('canvas'), { width, height });
  canvas.getContext('2d').putImageData(rgbToImageData(rgb, height, width), 0, 0);
  return canvas;
}

/** RGB bytes (H * W * 3, the graph's image_uint8) -> a PNG, base64 (lossless: the server gets these pixels). */
export async function rgbToPngBase64(rgb, height, width) {
  const canvas = rgbToCanvas(rgb, height, width);
  const blob = canvas.convertToBlob ? await canvas.convertToBlob({ type: 'image/png' })
    : await new Promise((resolve) => canvas.toBlob(resolve, 'image/png'));
  return toBase64(new Uint8Array(await blob.arrayBuffer()));
}

/** (1 - t) * a + t * b in float32 steps, as ``ClassCodes.lerp`` computes it with numpy (so the codes of a
 * kept frame are the server's for that t, bit for bit). */
export function lerpCodes(a, b, t) {
  const s = Math.fround(1 - t), u = Math.fround(t);
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = Math.fround(s * a[i]) + Math.fround(u * b[i]);
  return out;
}

/** Float32 codes -> ``ClassCodes.to_dict()`` (shape and class names from ``like``, a dict of the same model). */
export function codesToDict(codes, like) {
  const bytes = new Uint8Array(codes.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < codes.length; i++) view.setFloat32(4 * i, codes[i], true);
  return { format: 'smis-codes/1', shape: like.shape, class_names: like.class_names,
    float32_le_base64: toBase64(bytes) };
}
