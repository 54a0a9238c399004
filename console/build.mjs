// Bundles the console into one directory of static assets: index.html, app.js, app.css, each
// also gzip-compressed (berthd serves the .gz to browsers that accept it). berthd embeds the
// directory at build time (cmake/embed-console.cmake); CMake runs this script with
//   node build.mjs --outdir <dir> --modules <node_modules>
// and by hand `npm ci && npm run build` writes dist/ here.
import { createRequire } from 'node:module';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync, constants } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? resolve(process.argv[i + 1]) : fallback;
};
const outdir = arg('--outdir', join(here, 'dist'));
// node_modules may live in the build directory (CMake's npm ci), not beside the sources.
const modules = arg('--modules', join(here, 'node_modules'));
const esbuild = createRequire(join(modules, 'noop.js'))('esbuild');

mkdirSync(outdir, { recursive: true });
await esbuild.build({
  entryPoints: { app: join(here, 'src/main.jsx') },
  outdir,
  bundle: true,
  minify: true,
  format: 'esm',
  platform: 'browser',
  target: ['chrome109', 'firefox115', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  nodePaths: [modules],
  legalComments: 'none',
  // The same bytes from the same sources, so the assets and their ETags (taken from the
  // uncompressed files) are reproducible; the gzip copies depend on node's zlib as well.
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
});
copyFileSync(join(here, 'src/index.html'), join(outdir, 'index.html'));

let raw = 0, packed = 0;
for (const name of readdirSync(outdir)) {
  if (name.endsWith('.gz')) continue;
  const body = readFileSync(join(outdir, name));
  const gz = gzipSync(body, { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(join(outdir, name + '.gz'), gz);
  raw += body.length;
  packed += gz.length;
}
console.log(`console: ${raw} bytes, ${packed} gzip-compressed, in ${outdir}`);
