// The official OpenAI Node.js client against rkllm-server's OpenAI-compatible API,
// serving the RKLLM simulator (its replies are generated filler, not a model's).
// Run by cmd/rkllm-server's TestOpenAINodeClient (make test-openai-node), which
// installs the `openai` package next to this file and sets OPENAI_BASE_URL,
// OPENAI_API_KEY and MODEL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY, maxRetries: 0 });
const model = process.env.MODEL;

test('lists the model', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, [model]);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
});

test('a chat completion', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }], max_tokens: 8,
  });
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
});

test('a streamed chat completion', async () => {
  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Hello!' }], stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(text.length > 0);
  assert.ok(['stop', 'length'].includes(finish));
  assert.ok(usage.completion_tokens > 0);
  // The stream helper assembles the same message.
  const runner = client.chat.completions.stream({ model, messages: [{ role: 'user', content: 'Hello!' }] });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, text);
});

test('a tool call, and the answer to its result', async () => {
  const tools = [{
    type: 'function',
    function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
  }];
  const messages = [{ role: 'user', content: 'Use get_weather for Paris' }];
  const r = await client.chat.completions.create({ model, messages, tools });
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  const call = choice.message.tool_calls[0];
  assert.match(call.id, /^call_/);
  assert.equal(call.function.name, 'get_weather');
  assert.deepEqual(JSON.parse(call.function.arguments), { city: 'sim' });
  // Streamed, the client's helper assembles the same call.
  const runner = client.chat.completions.stream({ model, messages, tools });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.tool_calls[0].function.arguments, call.function.arguments);
  messages.push(choice.message, { role: 'tool', tool_call_id: call.id, content: '{"temp": 21}' });
  const answer = await client.chat.completions.create({ model, messages, tools });
  assert.notEqual(answer.choices[0].finish_reason, 'tool_calls');
  assert.ok(answer.choices[0].message.content.length > 0);
  assert.ok(answer.usage.prompt_tokens_details.cached_tokens > 0);
});

test('errors come as the client\'s error classes', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found' && e.param === 'model',
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], n: 3 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'n' && /one choice/.test(e.message),
  );
  const anonymous = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(anonymous.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.code === 'invalid_api_key');
  await assert.rejects(
    client.completions.create({ model, prompt: 'x', echo: true }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'echo',
  );
});

test('embeddings (the client asks for base64 and decodes it)', async () => {
  const r = await client.embeddings.create({ model, input: ['a document about NPUs', 'another text', 'a document about NPUs'] });
  assert.equal(r.data.length, 3);
  const [a, b, c] = r.data.map((d) => d.embedding);
  assert.ok(a.length > 0);
  assert.ok(Math.abs(Math.hypot(...a) - 1) < 1e-5);
  assert.deepEqual(a, c);
  assert.notDeepEqual(a, b);
  assert.ok(r.usage.prompt_tokens > 0);
  // As floats in JSON, the same vector (decimal text read as doubles: equal to float32 precision).
  const floats = await client.embeddings.create({ model, input: 'another text', encoding_format: 'float' });
  assert.equal(floats.data[0].embedding.length, b.length);
  floats.data[0].embedding.forEach((x, i) => assert.ok(Math.abs(x - b[i]) < 1e-6, `${i}: ${x} vs ${b[i]}`));
});

test('a (legacy) completion', async () => {
  const r = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 5 });
  assert.equal(r.object, 'text_completion');
  assert.ok(r.choices[0].text.length > 0);
});
