package main_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The request bodies Home Assistant's Ollama integration and Open WebUI's Ollama
// connection send, written from their public code (cited at each), against the server.
// The simulator answers a prompt that names a tool with a call of it, so the user
// messages name the tools; everything else is as the clients send it.

// haTools are Home Assistant's intent tools as its integration formats them
// (_format_tool: {"type": "function", "function": {name, parameters, description}},
// parameters from voluptuous_openapi.convert) after ollama-python's Tool model, which
// keeps type, items, description and enum of each property.
const haTools = `[{"type":"function","function":{"name":"HassTurnOn","description":"Turns on/opens/presses a device or entity. For locks, this performs a 'lock' action. Use for requests like 'turn on', 'activate', 'enable', or 'lock'.",` +
	`"parameters":{"type":"object","required":[],"properties":{"name":{"type":"string"},"area":{"type":"string"},"floor":{"type":"string"},` +
	`"domain":{"type":"array","items":{"type":"string","enum":["light","switch","fan","lock"]}}}}}},` +
	`{"type":"function","function":{"name":"GetLiveContext","description":"Provides real-time information about the CURRENT state, value, or mode of devices, sensors, entities, or areas.",` +
	`"parameters":{"type":"object","properties":{}}}}]`

// TestHomeAssistantOllamaBodies sends the requests of Home Assistant's Ollama
// conversation agent: homeassistant/components/ollama/entity.py
// (home-assistant/core, commit 31b9d64e0d37430a3a9f212231551ec4ca170a8b),
// _async_handle_chat_log, calls
//
//	client.chat(model=..., messages=..., tools=..., stream=True, keep_alive=f"{keep_alive}s",
//	            options={"num_ctx": num_ctx}, think=settings.get("think"), format=output_format)
//
// with the defaults of const.py (keep_alive -1, num_ctx 8192, think false), which
// ollama-python 0.6 (ollama/_client.py) sends as ChatRequest(...).model_dump(exclude_none=True)
// through httpx (compact JSON). Messages come from _convert_content: a tool result is
// {"role": "tool", "content": json.dumps(result)}, a past assistant turn carries its
// tool_calls with arguments as an object. The replies are read as _transform_stream
// reads them: message.content, message.tool_calls[].function.{name, arguments (a dict,
// iterated with .items())}, done.
func TestHomeAssistantOllamaBodies(t *testing.T) {
	eachABI(t, func(t *testing.T, abi string) {
		s := startServer(t, abi, serverOpts{config: map[string]any{"max-context-len": 4096}})
		system := `{"role":"system","content":"You are a voice assistant for Home Assistant.\nAnswer questions about the world truthfully.\nAnswer in plain text. Keep it simple and to the point.\nWhen controlling Home Assistant always call the intent tools. Use HassTurnOn to turn on devices.\nStatic Context: An overview of the areas and the devices in this smart home:\n- names: Kitchen Light\n  domain: light\n  areas: Kitchen\n"}`
		user := `{"role":"user","content":"Use HassTurnOn to turn on the kitchen light"}`
		first := `{"model":"model:latest","stream":true,"options":{"num_ctx":8192},"keep_alive":"-1s","messages":[` + system + `,` + user + `],"tools":` + haTools + `,"think":false}`
		lines := haStream(t, s, first)
		var call map[string]any
		var callName string
		var rawArgs json.RawMessage
		for _, l := range lines {
			for _, tc := range l.Message.ToolCalls {
				callName, rawArgs = tc.Function.Name, tc.Function.Arguments
				if err := json.Unmarshal(tc.Function.Arguments, &call); err != nil {
					t.Fatalf("arguments %s are not an object: %v", tc.Function.Arguments, err)
				}
			}
		}
		if callName != "HassTurnOn" || call["name"] != "sim" || call["domain"] == nil {
			t.Fatalf("Home Assistant gets the call %q %v from %+v", callName, call, lines)
		}
		// The next request: the assistant's call (its arguments in the order received, as
		// Python's dicts keep them, written compactly) and the tool's result appended.
		var args bytes.Buffer
		if err := json.Compact(&args, rawArgs); err != nil {
			t.Fatal(err)
		}
		assistant := `{"role":"assistant","tool_calls":[{"function":{"name":"HassTurnOn","arguments":` + args.String() + `}}]}`
		result := `{"role":"tool","content":"{\"speech\": {}, \"response_type\": \"action_done\", \"data\": {\"targets\": [], \"success\": [{\"name\": \"Kitchen Light\", \"type\": \"entity\", \"id\": \"light.kitchen\"}], \"failed\": []}}"}`
		second := `{"model":"model:latest","stream":true,"options":{"num_ctx":8192},"keep_alive":"-1s","messages":[` + system + `,` + user + `,` + assistant + `,` + result + `],"tools":` + haTools + `,"think":false}`
		lines = haStream(t, s, second)
		var text strings.Builder
		for _, l := range lines {
			text.WriteString(l.Message.Content)
		}
		if text.String() == "" {
			t.Errorf("the answer to the tool result is empty: %+v", lines)
		}
		// A question without tools (the integration's "no control" mode): plain text.
		plain := `{"model":"model:latest","stream":true,"options":{"num_ctx":8192},"keep_alive":"-1s","messages":[` + system + `,{"role":"user","content":"What time is it?"}],"tools":[],"think":false}`
		if lines := haStream(t, s, plain); lines[0].Message.Content == "" || lines[len(lines)-1].DoneReason != "stop" {
			t.Errorf("a plain question: %+v", lines)
		}
		// Its config flow lists the models to choose from (client.list: GET /api/tags).
		var tags struct {
			Models []struct {
				Model string `json:"model"`
			} `json:"models"`
		}
		_, body := s.v1(http.MethodGet, "/api/tags", "")
		if json.Unmarshal([]byte(body), &tags) != nil || len(tags.Models) != 1 || tags.Models[0].Model != "model:latest" {
			t.Errorf("tags: %s", body)
		}
	})
}

func haStream(t *testing.T, s *server, body string) []ollamaChat {
	t.Helper()
	resp, b := s.v1(http.MethodPost, "/api/chat", body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	var out []ollamaChat
	for _, l := range strings.Split(strings.TrimSpace(b), "\n") {
		var c ollamaChat
		if err := json.Unmarshal([]byte(l), &c); err != nil || c.Error != "" {
			t.Fatalf("line %q: %v", l, err)
		}
		out = append(out, c)
	}
	if !out[len(out)-1].Done {
		t.Fatalf("the stream does not end with done: %s", b)
	}
	return out
}

// TestOpenWebUIOllamaBodies sends the requests of Open WebUI's Ollama connection
// (open-webui/open-webui): the chat payload built by convert_payload_openai_to_ollama
// and apply_model_params_to_body_ollama (backend/open_webui/utils/payload.py, commit
// 227ce3f63e9eabf4cbdff5f13be7967a869e0d91) and posted by generate_chat_completion
// (backend/open_webui/routers/ollama.py, commit 598282cf75de358215d045c617e70d28bc48929e)
// as GenerateChatCompletionForm.model_dump(exclude_none=True), the model name with
// ":latest" added; its background tasks (title generation: "stream": false); native
// tool calling (tool_calls with index, id and parsed arguments, content ""; the tool
// result's tool_call_id dropped by its ChatMessage model); RAG embeddings as
// generate_ollama_batch_embeddings posts them to /api/embed ({"input": texts, "model":
// model, "truncate": true}); and the connection check and model list (GET /api/version,
// /api/tags, /api/ps with expires_at read by datetime.fromisoformat).
func TestOpenWebUIOllamaBodies(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-context-len": 4096}})
	for _, path := range []string{"/api/version", "/api/tags", "/api/ps"} {
		if resp, body := s.v1(http.MethodGet, path, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	var ps struct {
		Models []struct {
			Model     string `json:"model"`
			ExpiresAt string `json:"expires_at"`
		} `json:"models"`
	}
	if _, body := s.v1(http.MethodGet, "/api/ps", ""); json.Unmarshal([]byte(body), &ps) != nil || len(ps.Models) != 1 || ps.Models[0].Model != "model:latest" {
		t.Errorf("ps: %s", body)
	} else if _, err := time.Parse(time.RFC3339Nano, ps.Models[0].ExpiresAt); err != nil {
		t.Errorf("expires_at %q: %v", ps.Models[0].ExpiresAt, err)
	}
	// A chat with the model's advanced parameters set in Open WebUI (options, and
	// keep_alive and think moved to the top).
	chat := `{"model":"model:latest","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello!"}],"options":{"temperature":0.7,"top_p":0.9,"num_ctx":4096,"num_predict":64,"repeat_penalty":1.1},"stream":true,"keep_alive":"5m","think":false}`
	resp, body := s.v1(http.MethodPost, "/api/chat", chat)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("chat: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var reply strings.Builder
	var last ollamaChat
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		if err := json.Unmarshal([]byte(l), &last); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		reply.WriteString(last.Message.Content)
	}
	// Open WebUI's convert_ollama_usage_to_openai reads these counters.
	if reply.Len() == 0 || !last.Done || last.EvalCount == 0 || last.PromptEvalCount == 0 || last.TotalDuration == 0 {
		t.Errorf("chat reply %q, last line %+v", reply.String(), last)
	}
	// A background task: the title of the chat.
	title := `{"model":"model:latest","messages":[{"role":"user","content":"### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Output:\nJSON format: { \"title\": \"your concise title here\" }\n### Chat History:\n<chat_history>\nUSER: Hello!\nASSISTANT: ` + strings.Trim(jsonBody(reply.String()), `"`) + `\n</chat_history>"}],"stream":false}`
	if c := postOllama(t, s, title); c.Message.Content == "" || !c.Done {
		t.Errorf("title task: %+v", c)
	}
	// Native tool calling, then the tool's result.
	tools := `[{"type":"function","function":{"name":"get_current_weather","description":"Get the current weather for a city","parameters":{"type":"object","properties":{"city":{"type":"string","description":"The city"}},"required":["city"]}}}]`
	ask := `{"role":"user","content":"What is get_current_weather saying for Paris?"}`
	c := postOllama(t, s, `{"model":"model:latest","messages":[`+ask+`],"stream":false,"tools":`+tools+`}`)
	if len(c.Message.ToolCalls) != 1 || c.Message.ToolCalls[0].Function.Name != "get_current_weather" {
		t.Fatalf("tool call: %+v", c)
	}
	called := `{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_6f1c2a","function":{"name":"get_current_weather","arguments":` +
		string(c.Message.ToolCalls[0].Function.Arguments) + `}}]}`
	answer := postOllama(t, s, `{"model":"model:latest","messages":[`+ask+`,`+called+`,{"role":"tool","content":"Sunny, 21 degrees"}],"stream":false,"tools":`+tools+`}`)
	if answer.Message.Content == "" || len(answer.Message.ToolCalls) != 0 {
		t.Errorf("answer to the tool result: %+v", answer)
	}
	// RAG: a batch of document chunks, then the query.
	var embed struct {
		Model      string      `json:"model"`
		Embeddings [][]float32 `json:"embeddings"`
	}
	resp, body = s.v1(http.MethodPost, "/api/embed", `{"input":["RKLLM runs models on the RK3588 NPU.","The NPU has three cores."],"model":"model","truncate":true}`,
		"Authorization", "Bearer ")
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &embed) != nil || len(embed.Embeddings) != 2 || len(embed.Embeddings[0]) != 16 {
		t.Errorf("embed: %d %s", resp.StatusCode, body)
	}
}

func postOllama(t *testing.T, s *server, body string) ollamaChat {
	t.Helper()
	resp, b := s.v1(http.MethodPost, "/api/chat", body)
	var c ollamaChat
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(b), &c) != nil {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	return c
}
