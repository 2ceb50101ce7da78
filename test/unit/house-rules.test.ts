// The house rules (.dependency-cruiser.cjs) checked on the real tree, and shown to bite: a small
// tree that breaks each rule once must be refused with that rule's name.
import { execFile } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeDir } from '../../electron/engine/util/fs';

const run = promisify(execFile);
const root = resolve(__dirname, '../..');
const depcruise = join(root, 'node_modules', '.bin', 'depcruise');
const config = join(root, '.dependency-cruiser.cjs');

interface Violation {
  rule: { name: string };
  from: string;
  to: string;
}

/** Runs the dependency lint in `cwd` over `paths`; its violations, as depcruise reports them. */
async function violations(cwd: string, paths: string[]): Promise<Violation[]> {
  const r = await run(depcruise, [...paths, '--config', config, '--output-type', 'json'], { cwd, maxBuffer: 64 * 2 ** 20 }).catch(
    // depcruise exits non-zero when it finds violations; the JSON is still on stdout.
    (err: { stdout?: string; stderr?: string }) => {
      if (!err.stdout) throw new Error(`depcruise failed: ${err.stderr ?? String(err)}`);
      return { stdout: err.stdout };
    },
  );
  return (JSON.parse(r.stdout) as { summary: { violations: Violation[] } }).summary.violations;
}

const describeAll = (vs: Violation[]) => vs.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`);

describe('the house rules', () => {
  it('hold on this tree: layers point one way, no cycles, the renderer reaches only the API contract', async () => {
    expect(describeAll(await violations(root, ['electron', 'renderer/src']))).toEqual([]);
  }, 60_000);

  describe('bite', () => {
    let tree = '';
    const files: Record<string, string> = {
      // An upward import: qmp is the lowest layer but one.
      'electron/engine/qmp/client.ts': "import { x } from '../migration/types';\nexport const c = x;\n",
      'electron/engine/migration/types.ts': 'export const x = 1;\n',
      // A cycle inside one folder.
      'electron/engine/hosts/a.ts': "import { b } from './b';\nexport const a = () => b;\n",
      'electron/engine/hosts/b.ts': "import { a } from './a';\nexport const b = () => a;\n",
      // The renderer past the contract.
      'renderer/src/view.ts': "import { x } from '../../electron/engine/migration/types';\nimport type { Api } from '../../electron/engine/api/contract';\nexport const v: Api | number = x;\n",
      'electron/engine/api/contract.ts': 'export type Api = { a: 1 };\n',
      // A file outside the layer folders.
      'electron/engine/loose.ts': "import { x } from './migration/types';\nexport const l = x;\n",
      // A front door into another: the preload into main.
      'electron/preload/preload.ts': "import { m } from '../main/main';\nexport const p = m;\n",
      'electron/main/main.ts': 'export const m = 1;\n',
      'tsconfig.json': JSON.stringify({ compilerOptions: { module: 'ESNext', moduleResolution: 'Bundler', strict: true } }),
    };

    beforeAll(async () => {
      tree = await makeTempDir('house-rules');
      for (const [path, text] of Object.entries(files)) {
        await mkdir(dirname(join(tree, path)), { recursive: true });
        await writeFile(join(tree, path), text);
      }
    });
    afterAll(() => removeDir(tree));

    it('names each broken rule and both files', async () => {
      const found = describeAll(await violations(tree, ['electron', 'renderer']));
      expect(found).toEqual(
        expect.arrayContaining([
          'layer-qmp: electron/engine/qmp/client.ts -> electron/engine/migration/types.ts',
          'no-circular: electron/engine/hosts/a.ts -> electron/engine/hosts/b.ts',
          'renderer-api-only: renderer/src/view.ts -> electron/engine/migration/types.ts',
          'engine-in-folders: electron/engine/loose.ts -> electron/engine/migration/types.ts',
          'door-preload: electron/preload/preload.ts -> electron/main/main.ts',
        ]),
      );
      // The type-only import of the contract is allowed: it is the one way in.
      expect(found.filter((f) => f.includes('contract'))).toEqual([]);
    }, 60_000);
  });
});
