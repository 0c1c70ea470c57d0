// tf.min.js assigns the global `regeneratorRuntime` and, when strict mode forbids that assignment to an
// undeclared name, falls back to `Function(...)`, which the page's Content-Security-Policy (no eval) blocks.
// Declaring the global first lets tf.min.js load under that policy.
var regeneratorRuntime; // eslint-disable-line no-var, no-unused-vars
