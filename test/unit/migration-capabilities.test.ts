// The capability allowlist: what a migration may switch on, and a reason for everything else.
import { describe, expect, it } from 'vitest';
import { CAPABILITY_POLICY, capabilityRefusal } from '../../electron/engine/migration/capabilities';

describe('migration capabilities', () => {
  it('lets the pre-copy helpers on and gives every refused one a reason', () => {
    for (const c of ['xbzrle', 'auto-converge', 'multifd', 'return-path', 'late-block-activate']) expect([c, capabilityRefusal(c, true)]).toEqual([c, null]);
    for (const [c, p] of Object.entries(CAPABILITY_POLICY)) {
      if (!p.allowed) expect(capabilityRefusal(c, true)).toBe(p.why);
      if (c !== 'events') expect(capabilityRefusal(c, false), `${c} off`).toBeNull();
    }
  });

  it('refuses a name it does not know, saying to leave it off, and keeps events on', () => {
    expect(capabilityRefusal('x-teleport', true)).toMatch(/^MigLab does not know what x-teleport does to a migration.*leave it off$/);
    expect(capabilityRefusal('x-teleport', false)).toBeNull();
    expect(capabilityRefusal('events', true)).toBeNull();
    expect(capabilityRefusal('events', false)).toMatch(/events stays on/);
    expect(capabilityRefusal('__proto__', true)).toMatch(/does not know/);
  });
});
