// What the page spends per answer on its label table, at the seed's 2,451 species: the top-5, the rank-aware
// verdict (genus and family sums), the open-set score and the place prior's combination, in V8 (Chromium's engine).
// Usage: node bench/page_labels.js [species]
const R = require("../web/rollup.js");
const n = Number(process.argv[2] || 2451);
const labels = Array.from({ length: n }, (_, i) => ({ species: `Species ${i}`, genus: `Genus ${Math.floor(i / 5)}`,
  family: `Family ${Math.floor(i / 40)}`, class_key: String(i) }));
let seed = 1;
const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
const cases = Array.from({ length: 50 }, () => {
  const raw = Array.from({ length: n }, () => random() ** 8);
  const sum = raw.reduce((a, b) => a + b, 0);
  return raw.map((x) => x / sum);
});
const logPrior = Float64Array.from({ length: n }, () => Math.log(random() + 1e-3));
const combine = (p, w) => { // as web/place_prior.js: p × prior^w, renormalised
  const out = p.map((x, i) => x * Math.exp(w * logPrior[i]));
  const s = out.reduce((a, b) => a + b, 0);
  return out.map((x) => x / s);
};
const time = (f) => {
  for (let i = 0; i < 5; i++) f(cases[i]);
  const t = [];
  for (const p of cases) { const s = process.hrtime.bigint(); f(p); t.push(Number(process.hrtime.bigint() - s) / 1e6); }
  t.sort((a, b) => a - b);
  return t[t.length >> 1];
};
const gate = { score: "neg_entropy", threshold: -1.0 };
const rows = {
  "top-5": time((p) => R.topK(p, labels, 5)),
  "verdict (species, else genus, else family)": time((p) => R.answer(p, labels, 0.6)),
  "verdict with the open-set gate": time((p) => R.answer(p, labels, 0.6, gate, p)),
  "place prior combined": time((p) => combine(p, 1.0)),
};
rows["all of it, per answer"] = time((p) => { const q = combine(p, 1.0); R.topK(q, labels, 5); R.answer(q, labels, 0.6, gate, p); });
console.log(`| ${n.toLocaleString("en")} labels, median of ${cases.length} answers | ms |\n|---|---|`);
for (const [k, v] of Object.entries(rows)) console.log(`| ${k} | ${v.toFixed(3)} |`);
