// Checks the REST requests recorded by the Rocket.Chat connector's tests (JSON lines written
// by the fake server when ACG_RC_RECORD is set) against the official rest-typings validators.
// Usage: node check.mjs <rest-typings dist dir> <requests.jsonl>
// Exits 1 when a request fails its validator, or when no request could be checked at all.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [dist, recorded] = process.argv.slice(2);
// method + path → module (under v1/) and validator export. Bodies for POST, the query for GET
// (the query validators coerce strings, as the server does).
const table = [
  ['POST', /^\/api\/v1\/login$/, 'auth.js', 'isLoginProps'],
  ['POST', /^\/api\/v1\/chat\.postMessage$/, 'chat.js', 'isChatPostMessageProps'],
  ['POST', /^\/api\/v1\/chat\.update$/, 'chat.js', 'isChatUpdateProps'],
  ['POST', /^\/api\/v1\/im\.create$/, 'dm/DmCreateProps.js', 'isDmCreateProps'],
  ['GET', /^\/api\/v1\/channels\.history$/, 'channels/ChannelsHistoryProps.js', 'isChannelsHistoryProps'],
  ['GET', /^\/api\/v1\/groups\.history$/, 'groups/GroupsHistoryProps.js', 'isGroupsHistoryProps'],
  ['GET', /^\/api\/v1\/im\.history$/, 'dm/DmHistoryProps.js', 'isDmHistoryProps'],
  ['GET', /^\/api\/v1\/chat\.getMessage$/, 'chat.js', 'isChatGetMessageProps'],
  ['GET', /^\/api\/v1\/chat\.getThreadMessages$/, 'chat.js', 'isChatGetThreadMessagesProps'],
  ['GET', /^\/api\/v1\/groups\.info$/, 'groups/GroupsInfoProps.js', 'isGroupsInfoProps'],
  ['GET', /^\/api\/v1\/rooms\.info$/, 'rooms.js', 'isRoomsInfoProps'],
  ['GET', /^\/api\/v1\/subscriptions\.get$/, 'subscriptionsEndpoints.js', 'isSubscriptionsGetProps'],
  ['GET', /^\/api\/v1\/settings\.public$/, 'settings.js', 'isSettingsPublicWithPaginationProps'],
];

// Endpoints rest-typings types but ships no validator for: schemas transcribed from its
// .d.ts (v1/channels/channels.d.ts, v1/rooms.d.ts), checked with the same Ajv.
const { default: Ajv } = await import(pathToFileURL(join(dist, '..', 'node_modules', 'ajv', 'dist', 'ajv.js')).href);
const local = new Ajv({ coerceTypes: 'array', allowUnionTypes: true });
const transcribed = [
  ['GET', /^\/api\/v1\/channels\.info$/, local.compile({
    oneOf: [
      { type: 'object', properties: { roomId: { type: 'string' } }, required: ['roomId'], additionalProperties: false },
      { type: 'object', properties: { roomName: { type: 'string' } }, required: ['roomName'], additionalProperties: false },
    ],
  })],
  ['POST', /^\/api\/v1\/rooms\.mediaConfirm\/[^/]+\/[^/]+$/, local.compile({
    type: 'object',
    properties: Object.fromEntries(['description', 'avatar', 'emoji', 'alias', 'msg', 'tmid', 't', 'fileName']
      .map((k) => [k, { type: 'string' }]).concat([['groupable', { type: 'boolean' }], ['customFields', { type: 'object' }], ['content', { type: 'object' }]])),
    additionalProperties: false,
  })],
];

const lines = readFileSync(recorded, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const modules = new Map();
async function validator(file, name) {
  if (!modules.has(file)) modules.set(file, await import(pathToFileURL(join(dist, 'v1', file)).href));
  const f = modules.get(file)[name];
  if (typeof f !== 'function') throw new Error(`${file} has no ${name}`);
  return f;
}

let checked = 0;
let failed = 0;
const seen = new Set();
const unchecked = new Map();
for (const r of lines) {
  const row = table.find(([m, re]) => m === r.method && re.test(r.path));
  const own = transcribed.find(([m, re]) => m === r.method && re.test(r.path));
  if (!row && own) {
    const input = r.method === 'GET' ? { ...r.query } : r.body;
    checked += 1;
    if (!own[2](input)) {
      failed += 1;
      console.error(`INVALID ${r.method} ${r.path}: ${JSON.stringify(input)}\n  ${JSON.stringify(own[2].errors)}`);
    }
    continue;
  }
  if (!row) {
    unchecked.set(`${r.method} ${r.path.replace(/\/[A-Za-z0-9]{5,}(\/|$)/g, '/:id$1')}`, true);
    continue;
  }
  const f = await validator(row[2], row[3]);
  const input = r.method === 'GET' ? { ...r.query } : r.body;
  checked += 1;
  if (!f(input)) {
    failed += 1;
    const key = `${r.method} ${r.path} ${JSON.stringify(input)}`;
    if (!seen.has(key)) {
      seen.add(key);
      console.error(`INVALID ${r.method} ${r.path}: ${JSON.stringify(input)}\n  ${JSON.stringify(f.errors)}`);
    }
  }
}
console.log(`rest-typings: ${checked} requests checked, ${failed} invalid`);
if (unchecked.size) console.log(`no validator for: ${[...unchecked.keys()].sort().join(', ')}`);
if (checked === 0 || failed > 0) process.exit(1);
