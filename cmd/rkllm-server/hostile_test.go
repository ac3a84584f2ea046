package main_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// hostile is one malformed or hostile message and the error it must get.
type hostile struct {
	name string
	msg  string
	// http sends it to /rpc instead of the Unix socket (where admin methods are allowed).
	http bool
	code int
	// field is the error's data.field, contains a part of its message (both optional).
	field, contains string
	// responses is the number of responses of a batch (0: a single response).
	responses int
}

func req(method, params string) string {
	if params == "" {
		return `{"jsonrpc":"2.0","id":1,"method":"` + method + `"}`
	}
	return `{"jsonrpc":"2.0","id":1,"method":"` + method + `","params":` + params + `}`
}

func run(input string) string { return req("rkllm.run", `{"input":`+input+`}`) }

func runWith(infer string) string {
	return req("rkllm.run", `{"input":{"prompt_input":"x"},"infer_params":`+infer+`}`)
}

// hostileInputs are the table's entries; the server runs with the default limits.
func hostileInputs() []hostile {
	big := strings.Repeat("a", 10<<20)
	deep := strings.Repeat("[", 1000) + strings.Repeat("]", 1000)
	deeper := strings.Repeat(`{"a":[`, 20000) + strings.Repeat("]}", 20000)
	long := "[" + strings.Repeat("0,", 2<<20) + "0]"
	var batch strings.Builder
	batch.WriteString("[")
	for i := range 5000 {
		if i > 0 {
			batch.WriteString(",")
		}
		fmt.Fprintf(&batch, `{"jsonrpc":"2.0","id":%d,"method":"rkllm.is_running"}`, i)
	}
	batch.WriteString("]")
	// The harness's model: its vocabulary, and two rows of its embedding width.
	m := simulator.FastModel()
	vocab := m.VocabSize()
	floats32 := "[" + strings.TrimSuffix(strings.Repeat("0.5,", 2*m.HiddenSize), ",") + "]"
	return []hostile{
		// Not JSON, or not UTF-8: -32700.
		{name: "truncated JSON", msg: `{"jsonrpc":"2.0","id":1,"method":"rkllm.run"`, code: -32700},
		{name: "trailing garbage", msg: req("rkllm.is_running", "") + ` x`, code: -32700},
		{name: "NaN", msg: runWith(`{"sampling_params":{"top_p":NaN}}`), code: -32700},
		{name: "Infinity", msg: runWith(`{"sampling_params":{"temperature":Infinity}}`), code: -32700},
		{name: "single quotes", msg: `{'jsonrpc':'2.0','id':1,'method':'rkllm.run'}`, code: -32700},
		{name: "unquoted key", msg: `{jsonrpc:"2.0","id":1,"method":"rkllm.run"}`, code: -32700},
		{name: "comment", msg: `{"jsonrpc":"2.0",/* hi */"id":1,"method":"rkllm.run"}`, code: -32700},
		{name: "hex number", msg: `{"jsonrpc":"2.0","id":0x10,"method":"rkllm.run"}`, code: -32700},
		{name: "leading zero", msg: `{"jsonrpc":"2.0","id":01,"method":"rkllm.run"}`, code: -32700},
		{name: "invalid UTF-8", msg: run("{\"prompt_input\":\"caf\xe9\"}"), code: -32700, contains: "UTF-8"},
		{name: "overlong UTF-8", msg: run("{\"prompt_input\":\"\xc0\xaf\"}"), code: -32700, contains: "UTF-8"},
		{name: "lone low surrogate", msg: run(`{"prompt_input":"\udc00"}`), code: -32700, contains: "surrogate"},
		{name: "lone high surrogate", msg: run(`{"prompt_input":"\ud800 x"}`), code: -32700, contains: "surrogate"},
		// Not a JSON-RPC 2.0 request: -32600.
		{name: "empty body", msg: ``, http: true, code: -32600},
		{name: "empty batch", msg: `[]`, code: -32600},
		{name: "scalar", msg: `42`, code: -32600},
		{name: "string", msg: `"rkllm.run"`, code: -32600},
		{name: "null", msg: `null`, code: -32600},
		{name: "version 1.0", msg: `{"jsonrpc":"1.0","id":1,"method":"rkllm.is_running"}`, code: -32600, contains: `exactly "2.0"`},
		{name: "version as a number", msg: `{"jsonrpc":2.0,"id":1,"method":"rkllm.is_running"}`, code: -32600},
		{name: "version 2.0.0", msg: `{"jsonrpc":"2.0.0","id":1,"method":"rkllm.is_running"}`, code: -32600},
		{name: "no version", msg: `{"id":1,"method":"rkllm.is_running"}`, code: -32600},
		{name: "no method", msg: `{"jsonrpc":"2.0","id":1}`, code: -32600},
		{name: "method as a number", msg: `{"jsonrpc":"2.0","id":1,"method":7}`, code: -32600},
		{name: "empty method", msg: `{"jsonrpc":"2.0","id":1,"method":""}`, code: -32600},
		{name: "id as an object", msg: `{"jsonrpc":"2.0","id":{"a":1},"method":"rkllm.is_running"}`, code: -32600},
		{name: "id as an array", msg: `{"jsonrpc":"2.0","id":[1],"method":"rkllm.is_running"}`, code: -32600},
		{name: "id as a boolean", msg: `{"jsonrpc":"2.0","id":true,"method":"rkllm.is_running"}`, code: -32600},
		{name: "params as a string", msg: `{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":"hi"}`, code: -32600},
		{name: "params as a number", msg: `{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":3}`, code: -32600},
		{name: "unknown member", msg: `{"jsonrpc":"2.0","id":1,"method":"rkllm.is_running","foo":1}`, code: -32600, contains: `unknown member "foo"`},
		{name: "member in capitals", msg: `{"jsonrpc":"2.0","ID":1,"method":"rkllm.is_running"}`, code: -32600, contains: `unknown member "ID"`},
		{name: "repeated member", msg: `{"jsonrpc":"2.0","id":1,"method":"rkllm.is_running","method":"rkllm.init"}`, code: -32600, contains: "duplicate member"},
		{name: "duplicate ids in a batch", msg: `[` + req("rkllm.is_running", "") + `,` + req("rkllm.get_constants", "") + `]`, code: -32600, responses: 2, contains: "its own id"},
		{name: "batch of numbers", msg: `[1,2,3]`, code: -32600, responses: 3},
		// No such method: -32601.
		{name: "unknown method", msg: req("rkllm.nope", ""), code: -32601},
		{name: "method in capitals", msg: req("RKLLM.RUN", `{}`), code: -32601},
		{name: "method with a space", msg: req("rkllm.run ", `{}`), code: -32601},
		{name: "internal Go name", msg: req("Service.run", `{}`), code: -32601},
		// Params that do not fit: -32602, naming the field.
		{name: "params by position", msg: req("rkllm.run", `["hello"]`), code: -32602},
		{name: "no input", msg: req("rkllm.run", `{}`), code: -32602, field: "input"},
		{name: "null input", msg: run(`null`), code: -32602, field: "input"},
		{name: "input as a number", msg: run(`5`), code: -32602, field: "input"},
		{name: "prompt as a number", msg: run(`{"prompt_input":5}`), code: -32602, field: "input.prompt_input"},
		{name: "misspelt member", msg: run(`{"promt_input":"x"}`), code: -32602, field: "input.promt_input"},
		{name: "member in capitals", msg: req("rkllm.run", `{"Input":{"prompt_input":"x"}}`), code: -32602, field: "Input"},
		{name: "repeated param", msg: req("rkllm.run", `{"input":{"prompt_input":"x"},"input":{"prompt_input":"y"}}`), code: -32602, field: "input"},
		{name: "role", msg: run(`{"role":"admin","prompt_input":"x"}`), code: -32602, field: "input.role"},
		{name: "input type name", msg: run(`{"input_type":"RKLLM_INPUT_AUDIO","prompt_input":"x"}`), code: -32602, field: "input.input_type"},
		{name: "input type number", msg: run(`{"input_type":7,"prompt_input":"x"}`), code: -32602, field: "input.input_type"},
		{name: "input type without its member", msg: run(`{"input_type":"RKLLM_INPUT_TOKEN","prompt_input":"x"}`), code: -32602, field: "input.token_input"},
		{name: "two members without a type", msg: run(`{"prompt_input":"x","token_input":{"input_ids":[1]}}`), code: -32602, field: "input.input_type"},
		{name: "mode name", msg: runWith(`{"mode":"GENERATE"}`), code: -32602, field: "infer_params.mode"},
		{name: "mode number", msg: runWith(`{"mode":9}`), code: -32602, field: "infer_params.mode"},
		{name: "token id beyond int32", msg: run(`{"token_input":{"input_ids":[3000000000]}}`), code: -32602, field: "input.token_input.input_ids"},
		{name: "negative token id", msg: run(`{"token_input":{"input_ids":[5,-1]}}`), code: -32602, field: "input.token_input.input_ids[1]"},
		{name: "fractional token id", msg: run(`{"token_input":{"input_ids":[1.5]}}`), code: -32602, field: "input.token_input.input_ids"},
		{name: "no token ids", msg: run(`{"token_input":{"input_ids":[]}}`), code: -32602, field: "input.token_input.input_ids"},
		{name: "token count mismatch", msg: run(`{"token_input":{"input_ids":[1,2],"n_tokens":3}}`), code: -32602, field: "input.token_input.n_tokens"},
		{name: "token id past the vocabulary", msg: run(fmt.Sprintf(`{"token_input":{"input_ids":[300,%d]}}`, vocab)), code: -32602, field: "input.token_input.input_ids[1]", contains: "vocab_size"},
		{name: "token id at int32's end", msg: run(`{"token_input":{"input_ids":[2147483647]}}`), code: -32602, field: "input.token_input.input_ids[0]", contains: "vocab_size"},
		{name: "negative cross-attention position", msg: req("rkllm.set_cross_attn_params", `{"cross_attn_params":{"encoder_k_cache":`+floats32+`,"encoder_v_cache":`+floats32+`,"encoder_mask":[1,1],"encoder_pos":[0,-1],"num_tokens":2}}`), code: -32602, field: "cross_attn_params.encoder_pos[1]"},
		{name: "cross-attention position past the context", msg: req("rkllm.set_cross_attn_params", `{"cross_attn_params":{"encoder_k_cache":`+floats32+`,"encoder_v_cache":`+floats32+`,"encoder_mask":[1,1],"encoder_pos":[512,0],"num_tokens":2}}`), code: -32602, field: "cross_attn_params.encoder_pos[0]"},
		{name: "KV-cache range past the context", msg: req("rkllm.clear_kv_cache", `{"keep_system_prompt":0,"start_pos":[0],"end_pos":[513]}`), code: -32602, field: "end_pos[0]"},
		{name: "embedding without n_tokens", msg: run(`{"embed_input":{"embed":[1,2]}}`), code: -32602, field: "input.embed_input.n_tokens"},
		{name: "embedding not a multiple", msg: run(`{"embed_input":{"embed":[1,2,3],"n_tokens":2}}`), code: -32602, field: "input.embed_input.embed"},
		{name: "embedding not base64", msg: run(`{"embed_input":{"embed":"!!!","n_tokens":1}}`), code: -32602, field: "input.embed_input.embed"},
		{name: "embedding of strings", msg: run(`{"embed_input":{"embed":["a"],"n_tokens":1}}`), code: -32602, field: "input.embed_input.embed"},
		{name: "image count and embedding", msg: run(`{"multimodal_input":{"prompt":"<image><image>","image_embed":[1,2,3],"n_image":2,"n_image_tokens":1}}`), code: -32602, field: "input.multimodal_input.image_embed"},
		{name: "image embedding without images", msg: run(`{"multimodal_input":{"prompt":"x","image_embed":[1,2]}}`), code: -32602, field: "input.multimodal_input.image_embed"},
		{name: "negative image size", msg: run(`{"multimodal_input":{"prompt":"x","image_width":-1}}`), code: -32602, field: "input.multimodal_input.image_width"},
		{name: "empty input array", msg: run(`[]`), code: -32602, field: "input"},
		{name: "top_p above 1", msg: runWith(`{"sampling_params":{"top_p":1.5}}`), code: -32602, field: "infer_params.sampling_params.top_p"},
		{name: "negative temperature", msg: runWith(`{"sampling_params":{"temperature":-1}}`), code: -32602, field: "infer_params.sampling_params.temperature"},
		{name: "mirostat 3", msg: runWith(`{"sampling_params":{"mirostat":3}}`), code: -32602, field: "infer_params.sampling_params.mirostat"},
		{name: "huge number", msg: runWith(`{"sampling_params":{"top_k":1e400}}`), code: -32602, field: "infer_params.sampling_params.top_k"},
		{name: "max_new_tokens as a string", msg: runWith(`{"max_new_tokens":"5"}`), code: -32602, field: "infer_params.max_new_tokens"},
		{name: "flag of 2", msg: runWith(`{"keep_history":2}`), code: -32602, field: "infer_params.keep_history"},
		{name: "stream as a string", msg: req("rkllm.run", `{"input":{"prompt_input":"x"},"stream":"yes"}`), code: -32602, field: "stream"},
		{name: "encoding", msg: req("rkllm.run", `{"input":{"prompt_input":"x"},"encoding":"hex"}`), code: -32602, field: "encoding"},
		{name: "params for a method without", msg: req("rkllm.is_running", `{"x":1}`), code: -32602, field: "x"},
		{name: "abort of an unknown run", msg: req("rkllm.abort", `{"request_id":"r-999999"}`), code: -32602, field: "request_id"},
		{name: "abort over HTTP without an id", msg: req("rkllm.abort", `{}`), http: true, code: -32602, field: "request_id"},
		{name: "abort of a guessed id over HTTP", msg: req("rkllm.abort", `{"request_id":"r-1"}`), http: true, code: -32602, field: "request_id"},
		{name: "abort of a guessed long id", msg: req("rkllm.abort", `{"request_id":"r-00000000000000000000000000000001"}`), code: -32602, field: "request_id"},
		{name: "init is_async", msg: req("rkllm.init", `{"param":{"model_path":"model.rkllm","is_async":true}}`), code: -32602, field: "param.is_async"},
		{name: "init n_batch 0", msg: req("rkllm.init", `{"param":{"model_path":"model.rkllm","extend_param":{"n_batch":0}}}`), code: -32602, field: "param.extend_param.n_batch"},
		{name: "init n_keep past the context", msg: req("rkllm.init", `{"param":{"model_path":"model.rkllm","max_context_len":4096,"n_keep":99999999}}`), code: -32602, field: "param.n_keep"},
		{name: "init negative top_k", msg: req("rkllm.init", `{"param":{"model_path":"model.rkllm","top_k":-1}}`), code: -32602, field: "param.top_k"},
		{name: "NUL in a path", msg: req("rkllm.load_prompt_cache", `{"prompt_cache_path":"a\u0000b"}`), code: -32602, field: "prompt_cache_path"},
		// Not allowed: -32007.
		{name: "admin method over HTTP", msg: req("rkllm.init", `{"param":{"model_path":"model.rkllm"}}`), http: true, code: -32007},
		{name: "LoRA over HTTP", msg: req("rkllm.load_lora", `{"lora_adapter":{"lora_adapter_path":"chat.lora","lora_adapter_name":"c"}}`), http: true, code: -32007},
		{name: "destroy over HTTP", msg: req("rkllm.destroy", ""), http: true, code: -32007},
		{name: "saving a prompt cache over HTTP", msg: runWith(`{"prompt_cache_params":{"save_prompt_cache":1,"prompt_cache_path":"c.bin"}}`), http: true, code: -32007},
		{name: "run_async over HTTP", msg: req("rkllm.run_async", `{"input":{"prompt_input":"x"}}`), http: true, code: -32007},
		{name: "model path traversal", msg: req("rkllm.init", `{"param":{"model_path":"../../../../etc/passwd"}}`), code: -32007, field: "param.model_path"},
		{name: "absolute LoRA path", msg: req("rkllm.load_lora", `{"lora_adapter":{"lora_adapter_path":"/etc/passwd","lora_adapter_name":"x"}}`), code: -32007, field: "lora_adapter.lora_adapter_path"},
		{name: "prompt cache traversal", msg: runWith(`{"prompt_cache_params":{"save_prompt_cache":1,"prompt_cache_path":"../escape.bin"}}`), code: -32007, field: "infer_params.prompt_cache_params.prompt_cache_path"},
		{name: "symlink out of the model dir", msg: req("rkllm.load_prompt_cache", `{"prompt_cache_path":"escape/passwd"}`), code: -32007, field: "prompt_cache_path"},
		{name: "a second model", msg: req("rkllm.init", `{"param":{"model_path":"chat.lora"}}`), code: -32007, contains: "rkllm.destroy"},
		// Over a bound: -32008, naming it.
		{name: "10 MB string", msg: run(`{"prompt_input":"` + big + `"}`), code: -32008, field: "params.input.prompt_input", contains: "--max-string-bytes"},
		{name: "10 MB string over HTTP", msg: run(`{"prompt_input":"` + big + `"}`), http: true, code: -32008, contains: "--max-string-bytes"},
		{name: "deep nesting", msg: run(deep), code: -32008, contains: "--max-json-depth"},
		{name: "deeper than JSON parsers go", msg: run(deeper), code: -32008, contains: "--max-json-depth"},
		{name: "two million token ids", msg: run(`{"token_input":{"input_ids":` + long + `}}`), code: -32008, field: "params.input.token_input.input_ids", contains: "--max-array-len"},
		{name: "batch of thousands", msg: batch.String(), code: -32008, contains: "--max-batch"},
		{name: "message over the size limit", msg: run(`{"prompt_input":"` + strings.Repeat("b", 17<<20) + `"}`), code: -32008, contains: "--max-request-bytes"},
		{name: "body over the size limit", msg: run(`{"prompt_input":"` + strings.Repeat("b", 17<<20) + `"}`), http: true, code: -32008, contains: "--max-request-bytes"},
	}
}

// TestHostileInputs sends every entry of the table, over the socket or HTTP, checks
// the error it gets (and that the connection goes on), then checks that the server
// still answers a normal run exactly as before, with its worker never restarted.
func TestHostileInputs(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	if err := os.Symlink("/etc", filepath.Join(s.dir, "escape")); err != nil {
		t.Fatal(err)
	}
	before := ok[runResult](t, s.http("rkllm.run", prompt("Are you still there?")))
	table := hostileInputs()
	if len(table) < 60 {
		t.Fatalf("the table has %d entries, the issue asks for 60", len(table))
	}
	sock := s.rawDial()
	send := func(h hostile) []response {
		if h.http {
			return s.postRaw(h.msg)
		}
		return sock.exchange(h.msg)
	}
	for _, h := range table {
		resps := send(h)
		// A large message's bytes stay paid until its answer is written, so the next
		// one may find the budget still held for a moment and be told to retry, as
		// any client would be; it is sent again, as the server asks.
		for tries := 0; h.code != codeBusy && busyOnly(resps) && tries < 20; tries++ {
			time.Sleep(50 * time.Millisecond)
			resps = send(h)
		}
		want := max(h.responses, 1)
		if len(resps) != want {
			t.Errorf("%s: %d responses, want %d", h.name, len(resps), want)
			continue
		}
		for _, r := range resps {
			if r.Error == nil || r.Error.Code != h.code {
				t.Errorf("%s: got %s / %+v, want error %d", h.name, r.Result, r.Error, h.code)
				continue
			}
			if h.field != "" && r.Error.Data["field"] != h.field {
				t.Errorf("%s: error names field %v, want %s (%s)", h.name, r.Error.Data["field"], h.field, r.Error.Message)
			}
			if h.contains != "" && !strings.Contains(r.Error.Message, h.contains) {
				t.Errorf("%s: message %q lacks %q", h.name, r.Error.Message, h.contains)
			}
		}
	}
	after := ok[runResult](t, sock.call1(request(2, "rkllm.run", prompt("Are you still there?"))))
	if after.Text != before.Text || after.FinishReason != before.FinishReason {
		t.Errorf("after the table: %q (%s), before: %q (%s)", after.Text, after.FinishReason, before.Text, before.FinishReason)
	}
	if again := ok[runResult](t, s.http("rkllm.run", prompt("Are you still there?"))); again.Text != before.Text {
		t.Errorf("over HTTP after the table: %q, before: %q", again.Text, before.Text)
	}
	if code, st := s.status(); code != http.StatusOK || st["worker_restarts"] != 0.0 || st["queue_depth"] != 0.0 {
		t.Errorf("readyz after the table: %d %v", code, st)
	}
}

// codeBusy is -32002: busy, retry later.
const codeBusy = -32002

// busyOnly reports whether every response is -32002 (busy: retry later).
func busyOnly(resps []response) bool {
	for _, r := range resps {
		if r.Error == nil || r.Error.Code != codeBusy {
			return false
		}
	}
	return len(resps) > 0
}

// rawClient is a socket connection that sends one message and reads its one line.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func (s *server) rawDial() *rawClient {
	s.t.Helper()
	nc, err := dialNet("unix", s.socket)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = nc.Close() })
	return &rawClient{t: s.t, nc: nc, br: bufio.NewReaderSize(nc, 1<<20)}
}

// exchange sends msg as one line and returns the responses of the answer line.
func (c *rawClient) exchange(msg string) []response {
	c.t.Helper()
	_ = c.nc.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := c.nc.Write([]byte(msg + "\n")); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	line, err := c.br.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return parseResponses(c.t, line)
}

func (c *rawClient) call1(msg string) response {
	c.t.Helper()
	rs := c.exchange(msg)
	if len(rs) != 1 {
		c.t.Fatalf("%d responses", len(rs))
	}
	return rs[0]
}

// postRaw sends body to /rpc and returns the responses.
func (s *server) postRaw(body string) []response {
	s.t.Helper()
	resp, out := s.post(body)
	if resp.StatusCode == http.StatusMethodNotAllowed {
		s.t.Fatalf("POST /rpc: %d", resp.StatusCode)
	}
	return parseResponses(s.t, []byte(out))
}

func parseResponses(t *testing.T, line []byte) []response {
	t.Helper()
	line = []byte(strings.TrimSpace(string(line)))
	if len(line) > 0 && line[0] == '[' {
		var rs []response
		if err := json.Unmarshal(line, &rs); err != nil {
			t.Fatalf("answer %.200s: %v", line, err)
		}
		return rs
	}
	var r response
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("answer %.200s: %v", line, err)
	}
	return []response{r}
}
