// Stable error codes: part of the wire protocol and of the client library.

export const ErrorCode = {
  NOT_FOUND: 'NOT_FOUND',
  CAS_MISMATCH: 'CAS_MISMATCH',
  BAD_REQUEST: 'BAD_REQUEST',
  TOO_LARGE: 'TOO_LARGE',
  TIMEOUT: 'TIMEOUT',
  UNAVAILABLE: 'UNAVAILABLE',
  TOKEN_AHEAD: 'TOKEN_AHEAD',
  COMPACTED: 'COMPACTED',
  /** A write names a lease that does not exist (never granted, expired or revoked): nothing was written. */
  LEASE_NOT_FOUND: 'LEASE_NOT_FOUND',
  INTERNAL: 'INTERNAL',
  /** NATS refused the connection's credentials or permissions: not retryable. */
  AUTH: 'AUTH',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export const ERROR_CODES: readonly ErrorCode[] = Object.values(ErrorCode);

export interface WireError {
  code: ErrorCode;
  message: string;
}

/**
 * Every failure ckv reports, in the server (as a reply's error) and in the client
 * library alike. Switch on `code`: it is stable and part of the wire protocol.
 */
export class CkvError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
    this.name = 'CkvError';
  }
}
