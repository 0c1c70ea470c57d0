// Rank-aware answer from the model's species probabilities, as iNaturalist's Seek answers: name the species
// when it is confident, else the genus, else the family (probabilities summed over the classes they hold),
// else say it is not sure. The same rule as fungilib.rollup in Python.
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

  function answer(probabilities, labels, threshold) {
    const [top] = topK(probabilities, labels, 1);
    if (top.probability >= threshold) return { rank: "species", name: top.species, probability: top.probability };
    for (const rank of ["genus", "family"]) {
      const group = bestGroup(probabilities, labels, rank);
      if (group && group.probability >= threshold) return group;
    }
    return { rank: "none", name: null, probability: top.probability };
  }

  return { topK, answer };
});
