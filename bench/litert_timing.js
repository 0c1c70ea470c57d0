// Timing harness for bench/inference.py: LiteRT.js in the page, one image per call, as the identifier calls it.
import * as litert from "./litert/litert.js";

const median = (a) => { a.sort((x, y) => x - y); return a[a.length >> 1]; };

window.timeLiteRt = async (url, size, repeats, numThreads, threaded) => {
  if (!window.liteRtLoaded) {
    const build = threaded ? "litert_wasm_threaded_internal.js" : "litert_wasm_internal.js";
    await litert.loadLiteRt(new URL(`litert/wasm/${build}`, location.href).href);
    window.liteRtLoaded = true;
  }
  const model = await litert.loadAndCompile(url, { accelerator: "wasm", cpuOptions: { numThreads } });
  const x = new Float32Array(size * size * 3).map(() => Math.random() * 255);
  const shape = [1, size, size, 3];
  const once = async () => {
    const input = new litert.Tensor(x, shape);
    const [output] = await model.run([input]);
    await output.data();
    output.delete();
    input.delete();
  };
  for (let i = 0; i < 5; i++) await once();
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const start = performance.now();
    await once();
    times.push(performance.now() - start);
  }
  model.delete();
  return median(times);
};
window.timingReady = true;
