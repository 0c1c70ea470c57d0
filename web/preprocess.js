// The exported model's preprocessing, in JavaScript, read from the bundle's preprocessing.json: the same
// numbers as fungilib.input_pipeline.eval_transform (TensorFlow's tf.image.resize with antialias=True, a
// triangle kernel widened by the downscale factor; sizes rounded half-to-even in float32; central crop).
// Works in the browser (global `FungiPreprocess`) and in Node (require), so tests compare it with TensorFlow.
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.FungiPreprocess = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";
  const f32 = Math.fround;

  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  // One axis of TensorFlow's ScaleAndTranslate (translate 0): per output index, the first source index and
  // the normalised weights of the sources it reads.
  function spans(inSize, outSize) {
    const scale = f32(outSize / inSize);
    const invScale = f32(1 / scale);
    const kernelScale = Math.max(invScale, 1);
    const radius = kernelScale;  // triangle kernel: radius 1, widened when shrinking
    const starts = new Int32Array(outSize);
    const weights = [];
    for (let x = 0; x < outSize; x++) {
      const sample = f32(f32(x + 0.5) * invScale);
      let start = Math.ceil(sample - radius - 0.5);
      let end = Math.floor(sample + radius - 0.5);
      start = Math.min(Math.max(start, 0), inSize - 1);
      end = Math.min(Math.max(end, 0), inSize - 1) + 1;
      const w = new Float64Array(end - start);
      let total = 0;
      for (let s = start; s < end; s++) {
        const v = Math.max(0, 1 - Math.abs((s + 0.5 - sample) / kernelScale));
        w[s - start] = v;
        total += v;
      }
      if (total > 0) for (let i = 0; i < w.length; i++) w[i] /= total;
      starts[x] = start;
      weights.push(w);
    }
    return { starts, weights };
  }

  // The resized size before the crop: shorter side to input_size / crop_fraction, as TensorFlow rounds it.
  function resizedShape(height, width, spec) {
    const scale = f32(f32(spec.input_size / spec.crop_fraction) / Math.min(height, width));
    return [roundHalfEven(f32(height * scale)), roundHalfEven(f32(width * scale))];
  }

  function check(spec) {
    if (spec.resize_kernel !== "triangle" || spec.antialias !== true || spec.crop !== "central square")
      throw new Error("preprocessing.json asks for a resize this page does not implement: " +
        JSON.stringify({ resize_kernel: spec.resize_kernel, antialias: spec.antialias, crop: spec.crop }));
    const range = spec.input_range || [0, 255];
    if (range[0] !== 0 || range[1] !== 255) throw new Error("preprocessing.json: input_range must be [0, 255]");
  }

  // rgba: RGBA bytes (as canvas getImageData gives, not premultiplied), row-major height × width.
  // Returns Float32Array(size × size × 3), RGB in [0, 255], alpha composited on white.
  function preprocessRGBA(rgba, width, height, spec) {
    check(spec);
    const size = spec.input_size;
    const [newH, newW] = resizedShape(height, width, spec);
    const top = Math.floor((newH - size) / 2);
    const left = Math.floor((newW - size) / 2);
    const rows = spans(height, newH);
    const cols = spans(width, newW);
    // Pass 1: rows (only the size kept rows of the crop), all source columns.
    const mid = new Float64Array(size * width * 3);
    for (let y = 0; y < size; y++) {
      const start = rows.starts[top + y];
      const w = rows.weights[top + y];
      const out = y * width * 3;
      for (let k = 0; k < w.length; k++) {
        const wk = w[k];
        if (wk === 0) continue;
        const src = (start + k) * width * 4;
        for (let x = 0; x < width; x++) {
          const p = src + x * 4;
          const a = rgba[p + 3] / 255;
          const o = out + x * 3;
          mid[o] += wk * (a === 1 ? rgba[p] : rgba[p] * a + 255 * (1 - a));
          mid[o + 1] += wk * (a === 1 ? rgba[p + 1] : rgba[p + 1] * a + 255 * (1 - a));
          mid[o + 2] += wk * (a === 1 ? rgba[p + 2] : rgba[p + 2] * a + 255 * (1 - a));
        }
      }
    }
    // Pass 2: columns of the crop.
    const result = new Float32Array(size * size * 3);
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const start = cols.starts[left + x];
        const w = cols.weights[left + x];
        let r = 0, g = 0, b = 0;
        for (let k = 0; k < w.length; k++) {
          const m = (y * width + start + k) * 3;
          r += w[k] * mid[m];
          g += w[k] * mid[m + 1];
          b += w[k] * mid[m + 2];
        }
        const o = (y * size + x) * 3;
        result[o] = r;
        result[o + 1] = g;
        result[o + 2] = b;
      }
    }
    return result;
  }

  return { preprocessRGBA, resizedShape, roundHalfEven };
});
