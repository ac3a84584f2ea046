// The official OpenAI Node.js client against rkllm-gateway in front of two models
// (chat, ready; coder, at zero replicas and activated by the first request) and two
// models that find no NPU (full at once, busy after keeping a stream waiting), served by rkllm-server on the RKLLM simulator (its replies are
// generated filler, not a model's). Run by gateway/httpapi's
// TestOpenAINodeClientThroughGateway (make test-openai-node), which installs the
// `openai` package next to this file and sets OPENAI_BASE_URL and OPENAI_API_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY, maxRetries: 0 });

test('one URL lists every model, with whether it is loaded', async () => {
  const models = {};
  for await (const m of client.models.list()) models[m.id] = m;
  assert.deepEqual(Object.keys(models).sort(), ['busy', 'chat', 'coder', 'full']);
  assert.equal(models.chat.loaded, true);
  assert.equal(models.coder.loaded, false);
  const one = await client.models.retrieve('chat');
  assert.equal(one.id, 'chat');
});

test('a chat goes to the model it names', async () => {
  const r = await client.chat.completions.create({
    model: 'chat', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }], max_tokens: 8,
  });
  assert.equal(r.model, 'chat');
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.choices[0].message.content.length > 0);
});

test('a stream to a model at zero waits for it, through the gateway\'s comments', async () => {
  const stream = await client.chat.completions.create({
    model: 'coder', messages: [{ role: 'user', content: 'Write hello world' }], stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let model = null;
  for await (const chunk of stream) {
    model = chunk.model;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) text += c.delta.content ?? '';
  }
  assert.equal(model, 'coder');
  assert.ok(text.length > 0);
  assert.ok(usage.completion_tokens > 0);
  // Now loaded, and the helper assembles the same kind of message.
  const final = await client.chat.completions.stream({ model: 'coder', messages: [{ role: 'user', content: 'Again' }] }).finalChatCompletion();
  assert.ok(final.choices[0].message.content.length > 0);
});

test('errors come as the client\'s error classes', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found' && e.param === 'model' && /Available models: busy, chat, coder, full/.test(e.message),
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'full', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.InternalServerError && e.status === 503 && e.code === 'no_capacity' && /chat is busy/.test(e.message),
  );
  // A stream the gateway has opened (its comments sent) when the activation fails ends
  // with the error as an event, which the client raises.
  await assert.rejects(async () => {
    const stream = await client.chat.completions.create({ model: 'busy', messages: [{ role: 'user', content: 'x' }], stream: true });
    for await (const _ of stream) { /* read */ }
  }, (e) => e instanceof OpenAI.APIError && /no rockchip.com\/npu is free for model busy/.test(e.message));
  const anonymous = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: 'wrong-key-0123456789', maxRetries: 0 });
  await assert.rejects(anonymous.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.code === 'invalid_api_key');
  // The model's own server's errors pass through.
  await assert.rejects(
    client.chat.completions.create({ model: 'chat', messages: [{ role: 'user', content: 'x' }], n: 3 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'n',
  );
});
