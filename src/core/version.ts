// The version every program reports (--version, status); package.json's, kept equal by a test.
export const VERSION = '0.4.0';
