// Loaded into a `miglab` process with NODE_OPTIONS=--import=<this file>, for tests of what the
// CLI does when a bug surfaces: on SIGUSR2 it throws an exception nobody catches, or, with
// MIGLAB_TEST_FAULT=reject, rejects a promise nobody handles. Never loaded outside tests.
process.on('SIGUSR2', () => {
  if (process.env.MIGLAB_TEST_FAULT === 'reject') void Promise.reject(new Error('injected rejection'));
  else setImmediate(() => {
    throw new Error('injected fault');
  });
});
