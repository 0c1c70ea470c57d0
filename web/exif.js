// The GPS position and the date a JPEG's EXIF holds (a photo identified at home after the hike), or nulls.
"use strict";
(function (root) {
  function read(buffer) {
    const view = new DataView(buffer);
    const none = { lat: null, lon: null, month: null };
    if (view.byteLength < 4 || view.getUint16(0) !== 0xffd8) return none;
    let offset = 2;
    while (offset + 4 <= view.byteLength) {
      const marker = view.getUint16(offset);
      const length = view.getUint16(offset + 2);
      if (marker === 0xffe1 && view.getUint32(offset + 4) === 0x45786966) return parseTiff(view, offset + 10) || none;
      if ((marker & 0xff00) !== 0xff00 || marker === 0xffda) break;
      offset += 2 + length;
    }
    return none;
  }

  function parseTiff(view, start) {
    if (start + 8 > view.byteLength) return null;
    const little = view.getUint16(start) === 0x4949;
    const u16 = (o) => view.getUint16(start + o, little);
    const u32 = (o) => view.getUint32(start + o, little);
    const entries = (ifd) => {
      const out = new Map();
      if (start + ifd + 2 > view.byteLength) return out;
      const count = u16(ifd);
      for (let i = 0; i < count; i++) {
        const e = ifd + 2 + 12 * i;
        if (start + e + 12 > view.byteLength) break;
        out.set(u16(e), { type: u16(e + 2), count: u32(e + 4), at: e + 8 });
      }
      return out;
    };
    const valueOffset = (entry, size) => (entry.count * size > 4 ? u32(entry.at) : entry.at);
    const ascii = (entry) => {
      const at = valueOffset(entry, 1);
      let s = "";
      for (let i = 0; i < entry.count && start + at + i < view.byteLength; i++) {
        const c = view.getUint8(start + at + i);
        if (c) s += String.fromCharCode(c);
      }
      return s;
    };
    const degrees = (entry) => {
      if (!entry || entry.type !== 5 || entry.count < 3) return null;
      const at = valueOffset(entry, 8);
      let value = 0;
      for (let i = 0; i < 3; i++) {
        const den = u32(at + 8 * i + 4);
        value += den ? u32(at + 8 * i) / den / 60 ** i : 0;
      }
      return value;
    };
    const ifd0 = entries(u32(4));
    const result = { lat: null, lon: null, month: null };
    const gpsPointer = ifd0.get(0x8825);
    if (gpsPointer) {
      const gps = entries(u32(gpsPointer.at));
      const lat = degrees(gps.get(2));
      const lon = degrees(gps.get(4));
      // a position no place on Earth has (|lat| > 90, |lon| > 180, not a number) is no position at all
      if (lat !== null && lon !== null && Number.isFinite(lat) && Number.isFinite(lon) && lat <= 90 && lon <= 180) {
        result.lat = gps.get(1) && ascii(gps.get(1)).startsWith("S") ? -lat : lat;
        result.lon = gps.get(3) && ascii(gps.get(3)).startsWith("W") ? -lon : lon;
      }
    }
    const exifPointer = ifd0.get(0x8769);
    const dated = exifPointer ? entries(u32(exifPointer.at)).get(0x9003) : ifd0.get(0x0132);
    if (dated) {
      const month = Number(ascii(dated).slice(5, 7));
      if (month >= 1 && month <= 12) result.month = month;
    }
    return result;
  }

  const api = { read };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.FungiExif = api;
})(typeof self !== "undefined" ? self : this);
