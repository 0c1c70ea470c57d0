// Where and when (fungilib/place_prior.py, the same arithmetic): P(species | place, month) from the training
// photos' own coordinates and dates, combined with the image model as p ∝ p_image × prior^weight.
"use strict";
(function (root) {
  function cellOf(lat, lon, degrees) {
    const rows = Math.floor((lat + 90) / degrees);
    const cols = Math.floor((lon + 180) / degrees);
    return rows * Math.ceil(360 / degrees) + cols;
  }

  function index(flat) { // [cell, class, count, ...] → Map(cell → [[class, count], ...])
    const map = new Map();
    for (let i = 0; i < flat.length; i += 3) {
      if (!map.has(flat[i])) map.set(flat[i], []);
      map.get(flat[i]).push([flat[i + 1], flat[i + 2]]);
    }
    return map;
  }

  function create(data) {
    const n = data.classes;
    const k = data.smoothing;
    const fine = index(data.fine);
    const region = index(data.region);
    const totalsSum = data.totals.reduce((a, b) => a + b, 0);
    const perClass = Array.from({ length: n }, (_, c) => data.months.slice(12 * c, 12 * c + 12).reduce((a, b) => a + b, 0));

    function place(lat, lon) {
      let probs = data.totals.map((t) => (t + 1) / (totalsSum + n));
      for (const [table, degrees] of [[region, data.region_deg], [fine, data.cell_deg]]) {
        const counts = new Float64Array(n);
        let sum = 0;
        for (const [c, count] of table.get(cellOf(lat, lon, degrees)) || []) { counts[c] = count; sum += count; }
        probs = probs.map((p, c) => (counts[c] + k * p) / (sum + k));
      }
      return probs;
    }

    function season(month) {
      if (!(month >= 1)) return new Array(n).fill(1);
      return perClass.map((total, c) => (data.months[12 * c + month - 1] + k / 12) / (total + k));
    }

    // log prior per class for a place (lat/lon may be null) and a month (0 or null: unknown); all 0: no prior
    function logPrior(lat, lon, month) {
      const hasPlace = lat !== null && lon !== null && Number.isFinite(lat) && Number.isFinite(lon)
        && Math.abs(lat) <= 90 && Math.abs(lon) <= 180 && !(lat === 0 && lon === 0);
      if (!hasPlace && !(month >= 1)) return new Float64Array(n);
      const p = hasPlace ? place(lat, lon) : new Array(n).fill(1);
      const s = season(month);
      const prior = p.map((v, c) => v * s[c]);
      const total = prior.reduce((a, b) => a + b, 0);
      return Float64Array.from(prior, (v) => Math.log(v / total));
    }

    return { classes: n, weight: data.weight, logPrior };
  }

  function combine(probabilities, logPrior, weight) {
    const scores = Array.from(probabilities, (p, c) => Math.log(Math.max(p, 1e-30)) + weight * logPrior[c]);
    const top = Math.max(...scores);
    const e = scores.map((s) => Math.exp(s - top));
    const total = e.reduce((a, b) => a + b, 0);
    return Float64Array.from(e, (v) => v / total);
  }

  // Species the prior expects here and now: at least twice as likely as an even share.
  function expected(logPrior) {
    const n = logPrior.length;
    return Array.from(logPrior, (lp) => lp !== 0 && Math.exp(lp) >= 2 / n);
  }

  const api = { create, combine, expected, cellOf };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.FungiPrior = api;
})(typeof self !== "undefined" ? self : this);
