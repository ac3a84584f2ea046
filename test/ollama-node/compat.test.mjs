// The official `ollama` JavaScript client against rkllm-server's Ollama API (/api/),
// serving the RKLLM simulator (its replies are generated filler, not a model's).
// Run by cmd/rkllm-server's TestOllamaNodeClient (make test-ollama-node), which
// installs the `ollama` package next to this file and sets OLLAMA_HOST, API_KEY and
// MODEL (the model's Ollama name, such as model:latest).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Ollama } from 'ollama';

const headers = { Authorization: `Bearer ${process.env.API_KEY}` };
const ollama = new Ollama({ host: process.env.OLLAMA_HOST, headers });
const model = process.env.MODEL;
const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hello!' }];

test('lists, shows and reports the model', async () => {
  const { models } = await ollama.list();
  assert.deepEqual(models.map((m) => m.name), [model]);
  assert.equal(models[0].details.format, 'rkllm');
  const { version } = await ollama.version();
  assert.match(version, /^\d+\.\d+\.\d+$/);
  const ps = await ollama.ps();
  assert.equal(ps.models[0].model, model);
  assert.ok(ps.models[0].context_length > 0);
  const show = await ollama.show({ model });
  assert.ok(show.capabilities.includes('completion') && show.capabilities.includes('embedding'));
  assert.match(show.parameters, /num_ctx/);
});

test('a chat, whole and streamed', async () => {
  const r = await ollama.chat({ model, messages });
  assert.equal(r.message.role, 'assistant');
  assert.ok(r.message.content.length > 0);
  assert.equal(r.done, true);
  assert.equal(r.done_reason, 'stop');
  assert.ok(r.prompt_eval_count > 0 && r.eval_count > 0 && r.total_duration > 0);
  let text = '';
  let last;
  for await (const part of await ollama.chat({ model, messages, stream: true })) {
    text += part.message.content;
    last = part;
  }
  assert.equal(text, r.message.content);
  assert.equal(last.done, true);
  assert.equal(last.eval_count, r.eval_count);
});

test('generate, templated and raw', async () => {
  const r = await ollama.generate({ model, prompt: 'Hello!', system: 'Be brief.' });
  assert.ok(r.response.length > 0);
  const chat = await ollama.chat({ model, messages });
  assert.equal(r.response, chat.message.content);
  let raw = '';
  for await (const part of await ollama.generate({ model, prompt: 'Once upon a time', raw: true, stream: true, options: { num_predict: 4 } })) {
    raw += part.response;
    if (part.done) assert.equal(part.done_reason, 'length');
  }
  assert.ok(raw.length > 0);
});

test('a tool call, and the answer to its result', async () => {
  const tools = [{
    type: 'function',
    function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } },
  }];
  const history = [{ role: 'user', content: 'Use get_weather for Paris' }];
  const r = await ollama.chat({ model, messages: history, tools });
  const call = r.message.tool_calls[0];
  assert.equal(call.function.name, 'get_weather');
  assert.deepEqual(call.function.arguments, { city: 'sim' });
  history.push(r.message, { role: 'tool', content: '{"temp": 21}', tool_name: 'get_weather' });
  const answer = await ollama.chat({ model, messages: history, tools });
  assert.ok(answer.message.content.length > 0);
  assert.equal(answer.message.tool_calls, undefined);
});

test('embeddings', async () => {
  const { embeddings } = await ollama.embed({ model, input: ['a document about NPUs', 'another text', 'a document about NPUs'] });
  assert.equal(embeddings.length, 3);
  const norm = Math.hypot(...embeddings[0]);
  assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
  assert.deepEqual(embeddings[0], embeddings[2]);
  assert.notDeepEqual(embeddings[0], embeddings[1]);
  const { embedding } = await ollama.embeddings({ model, prompt: 'another text' });
  assert.deepEqual(embedding, embeddings[1]);
});

test('errors come as the client\'s ResponseError', async () => {
  await assert.rejects(ollama.chat({ model: 'llama3.2', messages }), (e) => e.name === 'ResponseError' && e.status_code === 404 && /not found/.test(e.error));
  await assert.rejects(ollama.pull({ model: 'llama3.2' }), (e) => e.status_code === 403 && /RKLLMModel/.test(e.error));
  await assert.rejects(ollama.delete({ model }), (e) => e.status_code === 403);
  await assert.rejects(ollama.chat({ model, messages, format: 'json' }), (e) => e.status_code === 400 && /constrain/.test(e.error));
  const anonymous = new Ollama({ host: process.env.OLLAMA_HOST });
  await assert.rejects(anonymous.list(), (e) => e.status_code === 401);
});
