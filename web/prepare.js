// Decode and prepare a photo off the page's main thread. A phone camera's 12-megapixel photo takes hundreds of
// milliseconds to decode, read back and resize exactly as training did (preprocess.js); in this worker the page
// stays responsive meanwhile. The same decoder (createImageBitmap) and the same code as the page's own path.
/* global importScripts, FungiPreprocess */
importScripts("preprocess.js");

self.onmessage = async (event) => {
  const { id, file, spec } = event.data;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none",
                                             imageOrientation: "from-image" });
  } catch (err) {
    self.postMessage({ id, error: "unreadable" });
    return;
  }
  try {
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    context.drawImage(bitmap, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height, { colorSpace: "srgb" });
    const input = FungiPreprocess.preprocessRGBA(pixels.data, canvas.width, canvas.height, spec);
    self.postMessage({ id, input }, [input.buffer]);
  } catch (err) {
    self.postMessage({ id, error: err && err.message ? err.message : String(err) });
  } finally {
    bitmap.close();
  }
};
