// The house rules: MigLab's layers point one way, and nothing imports in a circle. `npm test`
// runs this (npm run lint:deps); a violation names both files and the rule it breaks.
//
//   util, tls <- qmp <- qemu <- guest, network <- hosts <- migration <- lab <- api
//     <- front doors: web, agent (the server), main, preload, cli
//   renderer -> api/contract.ts only (types and pure helpers)
//
// Each engine folder lists what it may import besides itself; anything else is a violation.
const below = {
  util: [],
  tls: ['util'],
  qmp: ['util'],
  qemu: ['qmp', 'util'],
  guest: ['qemu', 'qmp', 'util'],
  network: ['qemu', 'qmp', 'util'],
  hosts: ['guest', 'network', 'qemu', 'qmp', 'tls', 'util'],
  migration: ['hosts', 'guest', 'network', 'qemu', 'qmp', 'tls', 'util'],
  lab: ['migration', 'hosts', 'guest', 'network', 'qemu', 'qmp', 'tls', 'util'],
  api: ['lab', 'migration', 'hosts', 'guest', 'network', 'qemu', 'qmp', 'tls', 'util'],
  web: ['api', 'lab', 'migration', 'hosts', 'guest', 'network', 'qemu', 'qmp', 'tls', 'util'],
  agent: ['hosts', 'guest', 'network', 'qemu', 'qmp', 'tls', 'util'],
};
const engine = Object.keys(below);
const alt = (names) => `(${names.join('|')})`;

/** Front doors outside electron/engine: what each may import. */
const doors = {
  cli: { may: `^electron/(cli|engine/${alt(engine)})/`, why: 'the CLI may use the engine and start the web server or an agent, but not the app' },
  main: { may: `^electron/(main|engine/${alt(engine.filter((f) => f !== 'agent'))})/`, why: 'the Electron main process may use the engine up to api and web' },
  preload: { may: '^electron/(preload/|engine/api/(contract|ipc-channels)\\.ts$)', why: 'the preload is a bridge: the API contract and the IPC channel names only' },
};

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'Files that import each other, directly or round a longer loop: move the shared piece down a layer.',
      from: { path: '^(electron|renderer)/' },
      to: { circular: true },
    },
    ...engine.map((folder) => ({
      name: `layer-${folder}`,
      severity: 'error',
      comment: `engine/${folder} may import only ${below[folder].length ? below[folder].join(', ') : 'itself'} (see the layer order at the top of .dependency-cruiser.cjs)`,
      from: { path: `^electron/engine/${folder}/` },
      to: {
        path: '^(electron|renderer)/',
        pathNot: `^electron/engine/${alt([folder, ...below[folder]])}/`,
      },
    })),
    ...Object.entries(doors).map(([door, rule]) => ({
      name: `door-${door}`,
      severity: 'error',
      comment: rule.why,
      from: { path: `^electron/${door}/` },
      to: { path: '^(electron|renderer)/', pathNot: rule.may },
    })),
    {
      name: 'engine-in-folders',
      severity: 'error',
      comment: 'Every engine file lives in a layer folder, so the rules above know where it stands.',
      from: { path: '^electron/engine/[^/]+$' },
      to: {},
    },
    {
      name: 'renderer-api-only',
      severity: 'error',
      comment: 'The renderer reaches the engine only through the API contract (types and pure helpers): the same UI runs in a browser.',
      from: { path: '^renderer/' },
      to: { path: '^electron/', pathNot: '^electron/engine/api/contract\\.ts$' },
    },
  ],
  options: {
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '(^|/)(node_modules|\\.vite|out)/' },
    enhancedResolveOptions: { extensions: ['.ts', '.tsx', '.js', '.mjs', '.cjs'] },
  },
};
