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
  INTERNAL: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export const ERROR_CODES: readonly ErrorCode[] = Object.values(ErrorCode);

export interface WireError {
  code: ErrorCode;
  message: string;
}

/** An error a request handler returns to the client (never a server crash). */
export class RequestError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = 'RequestError';
  }
}
