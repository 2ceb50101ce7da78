import { describe, expect, it } from 'vitest';
import { PromiseCache } from '../../electron/engine/util/promise-cache';

describe('PromiseCache', () => {
  it('makes one promise per key, forgets a rejected one, and forgets all on clear', async () => {
    const cache = new PromiseCache<number>();
    let made = 0;
    const make = () => Promise.resolve(++made);
    expect(await cache.get('a', make)).toBe(1);
    expect(await cache.get('a', make)).toBe(1); // not made again
    expect(await cache.get('b', make)).toBe(2);
    await expect(cache.get('c', () => Promise.reject(new Error('missing')))).rejects.toThrow('missing');
    expect(await cache.get('c', make)).toBe(3); // tried again after the failure
    cache.clear();
    expect(await cache.get('a', make)).toBe(4);
  });
});
