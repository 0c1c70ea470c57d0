// The page's inference runtime. LiteRT.js runs the bundle's batch-1 TFLite model: on WebGPU when the browser has it
// (and ?runtime=webgpu or config.accelerator asks), else on WebAssembly with XNNPACK — relaxed SIMD and all cores
// when the page is cross-origin isolated, one thread otherwise, and a plain build for browsers without relaxed
// SIMD. TF.js (already in the bundle, loaded only then) answers only when LiteRT.js cannot start at all.
// Everything is loaded from this origin.
import { isWebGPUSupported, loadAndCompile, loadLiteRt, Tensor } from "./litert/litert.js";

const wasmDir = () => new URL("litert/wasm/", location.href).href;

async function loadWasm() {
  const threads = self.crossOriginIsolated === true;
  try {
    await loadLiteRt(wasmDir(), { threads });
    return threads;
  } catch (err) {
    if (!threads) throw err;
    await loadLiteRt(wasmDir(), { threads: false }); // no relaxed SIMD: threads are not available there
    return false;
  }
}

async function liteRt(config, spec, wanted) {
  const threaded = await loadWasm();
  const accelerator = wanted === "webgpu" || (!wanted && config.accelerator === "webgpu" && isWebGPUSupported())
    ? "webgpu" : "wasm";
  // Threads pay from about 128 px: at 224 px two threads took 2.3 ms instead of 4.0 (MobileNetV3Small), at 96 px
  // 1.2 ms instead of 1.0 (bench/inference.py) — the work per call is too small to share.
  const cores = threaded && spec.input_size >= 128 ? Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 8)) : 1;
  const model = await loadAndCompile(config.litert_model, { accelerator, cpuOptions: { numThreads: cores } });
  const size = spec.input_size;
  const shape = [1, size, size, 3];
  return {
    name: accelerator === "webgpu" ? "LiteRT.js, WebGPU" : `LiteRT.js, WebAssembly, ${cores} thread${cores > 1 ? "s" : ""}`,
    threads: accelerator === "wasm" ? cores : 0,
    async predict(pixels) {
      const input = new Tensor(pixels, shape);
      try {
        const [output] = await model.run([input]);
        try {
          return Float32Array.from(await output.data());
        } finally {
          output.delete();
        }
      } finally {
        input.delete();
      }
    },
  };
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`${src} could not be loaded`));
    document.head.append(script);
  });
}

async function tfjs(config, spec, why) {
  await loadScript("tf-globals.js");
  await loadScript("tf.min.js");
  await tf.ready();
  const model = await tf.loadGraphModel(config.model);
  const size = spec.input_size;
  return {
    name: `TF.js ${tf.getBackend()} (LiteRT.js could not start: ${why})`,
    threads: 0,
    predict: (pixels) => tf.tidy(() => model.predict(tf.tensor4d(pixels, [1, size, size, 3]))).data(),
  };
}

// `wanted`: "wasm", "webgpu" or "tfjs" to force one (?runtime= in the address); otherwise the best available.
export async function createRuntime(config, spec, wanted) {
  let runtime;
  if (wanted === "tfjs") {
    runtime = await tfjs(config, spec, "?runtime=tfjs asked for TF.js");
  } else {
    try {
      runtime = await liteRt(config, spec, wanted);
    } catch (err) {
      runtime = await tfjs(config, spec, err && err.message ? err.message : String(err));
    }
  }
  const size = spec.input_size;
  await runtime.predict(new Float32Array(size * size * 3)); // warm up: the first call compiles
  return runtime;
}
