// Rank-aware answer from the model's species probabilities, as iNaturalist's Seek answers: name the species
// when it is confident, else the genus, else the family (probabilities summed over the classes they hold),
// else say it is not sure — and, first, "not a species this model knows" when the open-set gate turns
// the photo away. The same rule as fungilib.rollup in Python.
(function (root, factory) {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.FungiRollup = factory();
})(typeof self !== "undefined" ? self : this, function () {
  "use strict";

  function topK(probabilities, labels, k) {
    const order = Array.from(probabilities.keys()).sort((a, b) => probabilities[b] - probabilities[a]);
    return order.slice(0, k).map((i) => ({ index: i, probability: probabilities[i], ...labels[i] }));
  }

  function bestGroup(probabilities, labels, rank) {
    const sums = new Map();
    labels.forEach((label, i) => {
      const name = label[rank];
      if (name) sums.set(name, (sums.get(name) || 0) + probabilities[i]);
    });
    let best = null;
    for (const [name, p] of sums) if (best === null || p > best.probability) best = { rank, name, probability: p };
    return best;
  }

  // The open-set score of the photo's own probabilities (fungilib.open_set.probability_score): higher is more
  // like a species the model knows.
  function openSetScore(probabilities, score) {
    if (score === "msp") return Math.max(...probabilities);
    if (score === "neg_entropy") return probabilities.reduce((s, p) => s + p * Math.log(Math.max(p, 1e-30)), 0);
    throw new Error(`unknown open-set score ${score}`);
  }

  // The gate's score of a photo: of its own probabilities, or (output "appended") the score the model computed
  // and appended to them (fungilib.open_set.OpenSetGate.score_of).
  function gateScore(openSet, probabilities, modelScore) {
    if (openSet.output === "appended") {
      if (typeof modelScore !== "number") throw new Error(`the ${openSet.score} gate reads the model's appended score`);
      return modelScore;
    }
    return openSetScore(probabilities, openSet.score);
  }

  // openSet: {score, threshold[, output]} from config.json, or null; imageProbabilities: before any place prior;
  // modelScore: the open-set score the model appended to its probabilities, when its gate reads one.
  function answer(probabilities, labels, threshold, openSet, imageProbabilities, modelScore) {
    const [top] = topK(probabilities, labels, 1);
    if (openSet && gateScore(openSet, imageProbabilities || probabilities, modelScore) < openSet.threshold) {
      return { rank: "unknown", name: null, probability: top.probability };
    }
    if (top.probability >= threshold) return { rank: "species", name: top.species, probability: top.probability };
    for (const rank of ["genus", "family"]) {
      const group = bestGroup(probabilities, labels, rank);
      if (group && group.probability >= threshold) return group;
    }
    return { rank: "none", name: null, probability: top.probability };
  }

  // The photos of one find (its cap, gills, stem, base) answered together, as fungilib.find_metrics.combine:
  // "mean_log" (the mean of the photos' log-probabilities, renormalised) or "max" (each species' highest
  // probability, renormalised) — the rule the run chose on its validation finds.
  function combine(rows, rule) {
    if (!rows.length) throw new Error("a find needs at least one photo");
    const n = rows[0].length;
    const scores = new Float64Array(n);
    if (rule === "mean_log") {
      for (const row of rows) for (let i = 0; i < n; i++) scores[i] += Math.log(Math.max(row[i], 1e-30)) / rows.length;
      const top = Math.max(...scores);
      for (let i = 0; i < n; i++) scores[i] = Math.exp(scores[i] - top);
    } else if (rule === "max") {
      for (const row of rows) for (let i = 0; i < n; i++) scores[i] = Math.max(scores[i], row[i]);
    } else {
      throw new Error(`unknown rule ${rule}; rules: mean_log, max`);
    }
    const total = scores.reduce((s, v) => s + v, 0);
    return Array.from(scores, (v) => v / total);
  }

  // Photos of one find that each name a different species at ``sure`` or above (fungilib.predict_finds.SURE):
  // the find's answer says so.
  function disagree(rows, sure) {
    const named = new Set();
    for (const row of rows) {
      const best = topK(row, [], 1)[0];
      if (best.probability >= sure) named.add(best.index);
    }
    return named.size > 1;
  }

  return { topK, answer, openSetScore, gateScore, combine, disagree };
});
