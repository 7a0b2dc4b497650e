// ESLint flat config for the client: recommended rules everywhere, with the
// globals of each place the code runs (browsers, WeChat mini-programs, Node for
// the build script and the tests). CommonJS, because the package is: its
// `main` is the CommonJS build, so it cannot say "type": "module".
const js = require('@eslint/js');
const globals = require('globals');

// WeChat mini-program globals; `globals` has no preset for them.
const wechat = { wx: 'readonly', getApp: 'readonly', getCurrentPages: 'readonly' };

module.exports = [
  { ignores: ['dist/**', 'node_modules/**'] },
  js.configs.recommended,
  {
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    languageOptions: { ecmaVersion: 2022, sourceType: 'module' },
    rules: {
      // An unused argument often documents a callback's signature; a leading
      // underscore marks the ones that are deliberately unused elsewhere.
      'no-unused-vars': ['error', { args: 'none', caughtErrors: 'none', varsIgnorePattern: '^_' }],
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-var': 'error',
      'prefer-const': 'error',
      complexity: ['error', 10],
    },
  },
  {
    // The library runs in browsers and mini-programs; never Node-only APIs,
    // and ES2015 syntax only (older mini-program base libraries run the
    // client untranspiled: no `?.`, `**`, async, object spread or class fields).
    files: ['src/**/*.mjs'],
    // (globalThis is read only behind a typeof check.)
    languageOptions: { ecmaVersion: 2015, globals: { ...globals.browser, ...wechat, globalThis: 'readonly' } },
  },
  {
    files: ['scripts/**/*.mjs'],
    languageOptions: { globals: { ...globals.node } },
  },
  {
    files: ['eslint.config.js'],
    languageOptions: { sourceType: 'commonjs', globals: { ...globals.node } },
  },
  {
    files: ['test/**/*.mjs'],
    languageOptions: { globals: { ...globals.node, ...globals.browser, ...wechat } },
  },
];
