// Compile-only check (npm run typecheck): the implementation in src/ has every export
// index.d.ts declares, with compatible types (src is type-checked from its JSDoc).
// VERSION is left out: scripts/build.mjs adds it to the built files from package.json.
import * as impl from '../../src/index.mjs';
import type * as decl from '../../index';

const declared: Omit<typeof decl, 'VERSION'> = impl;
void declared;
