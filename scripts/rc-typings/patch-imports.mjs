// Makes the rest-typings dist importable by Node: its ES modules use extensionless relative
// imports (`./Ajv`, `./channels`) and `ajv/dist/2020`. Each relative import becomes `X.js`
// or `X/index.js`, whichever exists.
import { readdirSync, readFileSync, writeFileSync, existsSync, statSync } from 'node:fs';
import { join, dirname, resolve } from 'node:path';

const root = process.argv[2];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.js')) patch(p);
  }
}
function patch(file) {
  const src = readFileSync(file, 'utf8');
  const out = src
    .replace(/from '(\.{1,2}\/[^']*)'/g, (m, spec) => {
      if (spec.endsWith('.js')) return m;
      const base = resolve(dirname(file), spec);
      if (existsSync(base + '.js')) return `from '${spec}.js'`;
      if (existsSync(join(base, 'index.js'))) return `from '${spec}/index.js'`;
      return m;
    })
    .replace(/from 'ajv\/dist\/2020'/g, "from 'ajv/dist/2020.js'");
  if (out !== src) writeFileSync(file, out);
}
walk(root);
