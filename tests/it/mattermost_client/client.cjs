// The official Mattermost JavaScript client (`@mattermost/client`: REST `Client4` and
// `WebSocketClient`) driven against the fake Mattermost server by tests/it/mattermost.rs, so
// the fake is checked against what the official client sends and expects.
// Env: MM_MODULES (node_modules with @mattermost/client and ws), MM_URL, MM_TOKEN.
// Prints one JSON line with what it saw; exits non-zero on any mismatch.
'use strict';
const path = require('path');
const assert = require('assert');
const modules = process.env.MM_MODULES;
// Node 20 has no global WebSocket; the client reads `WebSocket.OPEN` from it.
globalThis.WebSocket = require(path.join(modules, 'ws'));
const { Client4, WebSocketClient } = require(path.join(modules, '@mattermost/client'));

const url = process.env.MM_URL;
const token = process.env.MM_TOKEN;

function waitFor(events, pred, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), 10000);
    const check = () => {
      const found = events.find(pred);
      if (found) {
        clearTimeout(timer);
        resolve(found);
      } else {
        setTimeout(check, 20);
      }
    };
    check();
  });
}

async function main() {
  const client = new Client4();
  client.setUrl(url);
  client.setToken(token);

  const me = await client.getMe();
  const teams = await client.getMyTeams();
  assert.strictEqual(teams.length, 1);
  const channel = await client.getChannelByName(teams[0].id, 'town-square');
  const byTeamName = await client.getChannelByNameAndTeamName('acme', 'town-square');
  assert.strictEqual(byTeamName.id, channel.id);
  const alice = await client.getUserByUsername('alice');
  const dm = await client.createDirectChannel([me.id, alice.id]);
  assert.strictEqual(dm.type, 'D');

  const events = [];
  const ws = new WebSocketClient({ newWebSocketFn: (u) => new globalThis.WebSocket(u) });
  ws.addMessageListener((msg) => events.push(msg));
  ws.initialize(url.replace(/^http/, 'ws') + '/api/v4/websocket', token);
  await waitFor(events, (m) => m.event === 'hello', 'hello');

  const post = await client.createPost({ channel_id: channel.id, message: 'from the official client' });
  assert.strictEqual(post.id.length, 26);
  const posted = await waitFor(
    events,
    (m) => m.event === 'posted' && JSON.parse(m.data.post).id === post.id,
    'the posted event',
  );
  assert.strictEqual(typeof posted.data.post, 'string');

  await client.patchPost({ id: post.id, message: 'edited by the official client' });
  const edited = await waitFor(
    events,
    (m) => m.event === 'post_edited' && JSON.parse(m.data.post).id === post.id,
    'the post_edited event',
  );
  assert.strictEqual(JSON.parse(edited.data.post).message, 'edited by the official client');

  const reply = await client.createPost({ channel_id: channel.id, message: 'in the thread', root_id: post.id });
  assert.strictEqual(reply.root_id, post.id);
  // Named by a reply, the thread is still the root and all its replies.
  const thread = await client.getPostThread(reply.id);
  assert.deepStrictEqual(new Set(thread.order), new Set([post.id, reply.id]));
  assert.strictEqual(thread.posts[reply.id].root_id, post.id);

  const since = await client.getPostsSince(channel.id, post.create_at - 1);
  assert.deepStrictEqual(new Set(since.order), new Set([post.id, reply.id]));
  assert.strictEqual(since.posts[post.id].message, 'edited by the official client');

  const form = new FormData();
  form.append('channel_id', channel.id);
  form.append('files', new Blob([Buffer.from('file body')]), 'notes.txt');
  const uploaded = await client.uploadFile(form);
  assert.strictEqual(uploaded.file_infos.length, 1);
  const withFile = await client.createPost({ channel_id: channel.id, message: '', file_ids: [uploaded.file_infos[0].id] });
  const fileResp = await fetch(client.getFileUrl(uploaded.file_infos[0].id), {
    headers: { Authorization: `Bearer ${token}` },
  });
  assert.strictEqual(await fileResp.text(), 'file body');

  let pong = null;
  ws.sendMessage('ping', null, (msg) => { pong = msg; });
  await waitFor([true], () => pong !== null, 'the ping reply');
  assert.strictEqual(pong.status, 'OK');

  let denied = null;
  const bad = new Client4();
  bad.setUrl(url);
  bad.setToken('wrong');
  try {
    await bad.getMe();
  } catch (e) {
    denied = e.status_code;
  }
  assert.strictEqual(denied, 401);

  ws.close();
  console.log(JSON.stringify({ ok: true, me: me.username, channel: channel.id, dm: dm.id, posts: [post.id, reply.id, withFile.id] }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e && e.stack ? e.stack : String(e));
    process.exit(1);
  },
);
