// Run a TF.js graph model in Node with the pure-JS CPU backend of @tensorflow/tfjs (no native add-on):
//   node tfjs_predict.cjs MODEL_DIR IMAGES.f32 N H W OUT.json
// IMAGES.f32 holds N×H×W×3 little-endian float32 pixels in [0, 255], already resized and cropped.
// OUT.json receives {"probabilities": [[...], ...], "ms_per_image": t, "backend": "cpu"}.
"use strict";
const fs = require("fs");
const path = require("path");
const tf = require("@tensorflow/tfjs");

function fileHandler(modelDir) {
  return {
    load: async () => {
      const json = JSON.parse(fs.readFileSync(path.join(modelDir, "model.json"), "utf8"));
      const specs = [];
      const buffers = [];
      for (const group of json.weightsManifest) {
        specs.push(...group.weights);
        for (const shard of group.paths) buffers.push(fs.readFileSync(path.join(modelDir, shard)));
      }
      const all = Buffer.concat(buffers);
      return {
        modelTopology: json.modelTopology,
        format: json.format,
        generatedBy: json.generatedBy,
        convertedBy: json.convertedBy,
        signature: json.signature,
        userDefinedMetadata: json.userDefinedMetadata,
        weightSpecs: specs,
        weightData: all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength),
      };
    },
  };
}

async function main() {
  const [modelDir, imagesPath, n, h, w, outPath] = process.argv.slice(2);
  const [N, H, W] = [Number(n), Number(h), Number(w)];
  await tf.setBackend("cpu");
  const model = await tf.loadGraphModel(fileHandler(modelDir));
  const raw = fs.readFileSync(imagesPath);
  const pixels = new Float32Array(raw.buffer, raw.byteOffset, N * H * W * 3);
  const rows = [];
  tf.tidy(() => model.predict(tf.zeros([1, H, W, 3])));  // warm-up: kernels and weights ready before timing
  const start = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    const one = pixels.subarray(i * H * W * 3, (i + 1) * H * W * 3);
    const probs = tf.tidy(() => model.predict(tf.tensor4d(one, [1, H, W, 3])));
    rows.push(Array.from(await probs.data()));
    probs.dispose();
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6 / Math.max(N, 1);
  fs.writeFileSync(outPath, JSON.stringify({ probabilities: rows, ms_per_image: ms, backend: tf.getBackend() }));
}

main().catch((err) => {
  console.error(`tfjs_predict: ${err && err.message ? err.message : err}`);
  process.exit(1);
});
