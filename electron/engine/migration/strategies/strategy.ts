// A convergence strategy: what it asks of QEMU (capabilities, parameters), which QEMUs offer it,
// and how the UI explains it. The orchestrator applies whichever one a migration names without
// knowing which it is; each strategy is one file in this folder, listed in index.ts.
import type { z } from 'zod';
import type { MigrateSetParameters, MigrationCapability } from '../../qmp/types';

export type StrategyName = 'precopy' | 'auto-converge' | 'xbzrle' | 'multifd' | 'pause-before-switchover';

export interface StrategyDefinition<P extends Record<string, unknown> = Record<string, unknown>> {
  name: StrategyName;
  title: string;
  /** One paragraph for the UI and `miglab demo --help`: what it does to a migration, and its price. */
  explanation: string;
  /** Capabilities it switches on, on both QEMUs (pre-flight checks that both offer each). */
  capabilities: MigrationCapability[];
  /** Which QEMUs offer it, for the sentence when one does not. */
  offeredBy: string;
  /** Its parameters, each optional with QEMU's or MigLab's default, checked before anything starts. */
  params: z.ZodType<P>;
  /** What it sets with migrate-set-parameters on the source, and on the destination where both must agree. */
  qemuParameters(params: P): { source: MigrateSetParameters; destination: MigrateSetParameters };
  /** The figures it adds to each sample and what they mean (shown as the chart's legend). */
  figures: { key: 'cpuThrottlePercent' | 'xbzrle' | 'multifdBytes'; what: string }[];
}

/** A strategy as the orchestrator and the API see it: its parameters checked at the door. */
export interface Strategy extends Omit<StrategyDefinition, 'params' | 'qemuParameters'> {
  /** The parameters, defaults left out; a ZodError naming each problem otherwise. */
  parseParams(raw: unknown): Record<string, unknown>;
  /** migrate-set-parameters for each side, from parameters parseParams accepted. */
  qemuParameters(raw: unknown): { source: MigrateSetParameters; destination: MigrateSetParameters };
}

/** Each strategy file's export goes through here: typed inside, one shape outside. */
export function defineStrategy<P extends Record<string, unknown>>(def: StrategyDefinition<P>): Strategy {
  const { params, qemuParameters, ...rest } = def;
  return {
    ...rest,
    parseParams: (raw) => params.parse(raw ?? {}),
    qemuParameters: (raw) => qemuParameters(params.parse(raw ?? {})),
  };
}
