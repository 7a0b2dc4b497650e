// The example mini-program's own JavaScript (app.js, utils/, pages/) is
// linted like the client: ES2015 syntax only (base libraries run it
// untranspiled when "es6" is off), ESLint's recommended rules, and no global
// beyond what a mini-program has. ESLint's CLI cannot reach a folder outside
// this package, so its Linter runs here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { createRequire } from 'node:module';
import { MINIPROGRAM } from './support/miniprogram.mjs';

const require = createRequire(import.meta.url);
const { Linter } = require('eslint');
const js = require('@eslint/js');
const globals = require('globals');

/** The mini-program's own sources (the generated client excepted: it is checked in src/). */
function sources(dir = MINIPROGRAM) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sources(path));
    else if (name.endsWith('.js') && relative(MINIPROGRAM, path) !== join('utils', 'progress-relay.js')) out.push(path);
  }
  return out;
}

const config = [
  js.configs.recommended,
  {
    files: ['**/*.js'],
    languageOptions: {
      ecmaVersion: 2015,
      sourceType: 'commonjs',
      globals: {
        ...globals.commonjs,
        wx: 'readonly', App: 'readonly', Page: 'readonly', Component: 'readonly', getApp: 'readonly',
        setTimeout: 'readonly', clearTimeout: 'readonly', console: 'readonly', Promise: 'readonly'
      }
    },
    rules: { 'no-var': 'error', 'prefer-const': 'error', eqeqeq: ['error', 'always', { null: 'ignore' }] }
  }
];

test('the mini-program\'s JavaScript is ES2015 and lint-clean', () => {
  const files = sources();
  assert.ok(files.length >= 4, `found ${files.length} files`);
  const linter = new Linter({ configType: 'flat' });
  const problems = [];
  for (const file of files) {
    const rel = relative(MINIPROGRAM, file);
    for (const m of linter.verify(readFileSync(file, 'utf8'), config, rel)) problems.push(`${rel}:${m.line}:${m.column} ${m.message}`);
  }
  assert.deepEqual(problems, []);
});

test('the lint of the mini-program refuses syntax newer than ES2015', () => {
  const linter = new Linter({ configType: 'flat' });
  const messages = linter.verify('const a = {}; module.exports = a?.b;\n', config, 'x.js');
  assert.equal(messages.length, 1);
  assert.match(messages[0].message, /Parsing error/);
});
