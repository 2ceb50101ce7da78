import { describe, expect, it } from 'vitest';
import {
  parseCandidate,
  parseDeb822Sources,
  parseOneLineSources,
  pickBookwormMirror,
} from '../../electron/engine/qemu/private-qemu';

describe('the machine\'s Debian mirror, read from its apt sources', () => {
  it('reads deb822 stanzas, with Signed-By, and skips disabled ones and deb-src', () => {
    const text = [
      'Types: deb',
      '# http://snapshot.debian.org/archive/debian/20250520T000000Z',
      'URIs: http://deb.debian.org/debian',
      'Suites: bookworm bookworm-updates',
      'Components: main',
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg',
      '',
      'Types: deb',
      'URIs: http://deb.debian.org/debian-security',
      'Suites: bookworm-security',
      'Components: main',
      '',
      'Types: deb-src',
      'URIs: http://src.example/debian',
      'Suites: bookworm',
      'Components: main',
      '',
      'Types: deb',
      'Enabled: no',
      'URIs: http://off.example/debian',
      'Suites: bookworm',
      'Components: main',
    ].join('\n');
    const s = parseDeb822Sources(text);
    expect(s.map((x) => x.uri)).toEqual(['http://deb.debian.org/debian', 'http://deb.debian.org/debian-security']);
    expect(s[0]).toEqual({
      uri: 'http://deb.debian.org/debian',
      suites: ['bookworm', 'bookworm-updates'],
      components: ['main'],
      signedBy: '/usr/share/keyrings/debian-archive-keyring.gpg',
    });
    expect(pickBookwormMirror(s)?.uri).toBe('http://deb.debian.org/debian');
  });

  it('reads one-line sources with options and comments', () => {
    const s = parseOneLineSources(
      '# deb http://commented.example/debian bookworm main\n' +
        'deb [arch=amd64 signed-by=/etc/k.gpg] http://mirror.example/debian/ bookworm main contrib # trailing\n' +
        'deb-src http://mirror.example/debian bookworm main\n' +
        'deb http://security.example/debian-security bookworm-security main\n',
    );
    expect(s).toEqual([
      { uri: 'http://mirror.example/debian/', suites: ['bookworm'], components: ['main', 'contrib'], signedBy: '/etc/k.gpg' },
      { uri: 'http://security.example/debian-security', suites: ['bookworm-security'], components: ['main'], signedBy: null },
    ]);
    expect(pickBookwormMirror(s)?.uri).toBe('http://mirror.example/debian/');
  });

  it('finds no mirror on a machine without a bookworm main source (Ubuntu, Debian 13)', () => {
    expect(pickBookwormMirror(parseOneLineSources('deb http://archive.ubuntu.com/ubuntu noble main universe\n'))).toBeNull();
    expect(pickBookwormMirror(parseOneLineSources('deb http://deb.debian.org/debian trixie main\n'))).toBeNull();
    expect(pickBookwormMirror(parseOneLineSources('deb cdrom:[Debian 12] bookworm main\n'))).toBeNull();
  });

  it('reads apt-cache policy\'s candidate', () => {
    const policy = 'qemu-system-x86:\n  Installed: 1:7.2+dfsg-7+deb12u18+b3\n  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1\n  Version table:\n';
    expect(parseCandidate(policy)).toBe('1:10.0.2+ds-2+deb13u1~bpo12+1');
    expect(parseCandidate('qemu-system-x86:\n  Installed: (none)\n  Candidate: (none)\n')).toBeNull();
    expect(parseCandidate('')).toBeNull();
  });
});
