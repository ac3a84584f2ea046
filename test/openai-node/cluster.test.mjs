// The official OpenAI Node.js client against rkllm-gateway on the simulated edge cluster,
// in front of two models that share one NPU (chat, loaded; coder, at zero), whose
// rkllm-server pods really run on the RKLLM simulator (their replies are generated
// filler, not a model's). Run by test/e2e/edge (make e2e), which installs the `openai`
// package next to this file and sets OPENAI_BASE_URL and OPENAI_API_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY, maxRetries: 0, timeout: 600_000 });

test('one URL lists both models, with the one loaded', async () => {
  const models = {};
  for await (const m of client.models.list()) models[m.id] = m;
  assert.deepEqual(Object.keys(models).sort(), ['chat', 'coder']);
  assert.equal(models.chat.loaded, true);
  assert.equal(models.coder.loaded, false);
});

test('a stream from the loaded model', async () => {
  const stream = await client.chat.completions.create({
    model: 'chat', messages: [{ role: 'user', content: 'Hello!' }], stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.model, 'chat');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) text += c.delta.content ?? '';
  }
  assert.ok(text.length > 0);
  assert.ok(usage.completion_tokens > 0);
});

test('a request for the other model swaps it in', async () => {
  const r = await client.chat.completions.create({ model: 'coder', messages: [{ role: 'user', content: 'Write hello world' }], max_tokens: 8 });
  assert.equal(r.model, 'coder');
  assert.ok(r.choices[0].message.content.length > 0);
  const models = {};
  for await (const m of client.models.list()) models[m.id] = m;
  assert.equal(models.coder.loaded, true);
});
