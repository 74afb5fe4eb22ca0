/** A duration as people write it: 500ms, 30s, 5m, 2h, 7d, or a bare number of seconds; in ms (null: not one). */
export function parseDurationMs(s: string): number | null {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(s);
  if (!m) return null;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd'];
  const ms = Number(m[1]) * unit;
  return Number.isSafeInteger(ms) && ms > 0 ? ms : null;
}

/** A size as people write it: 4096, 512K, 64M, 4G, 1T (powers of 1024); in bytes (null: not one). */
export function parseByteSize(s: string): number | null {
  const m = /^(\d+)([KMGT])?$/i.exec(s);
  if (!m) return null;
  const n = Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] ?? ' ').toUpperCase());
  return Number.isSafeInteger(n) && n > 0 ? n : null;
}
