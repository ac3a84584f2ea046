package ollama

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestReasoning: the reply's <think> block goes to thinking and the rest to content,
// however the text is cut into pieces (tags across pieces included), with the white
// space around the block dropped.
func TestReasoning(t *testing.T) {
	cases := []struct {
		name, reply       string
		thinking, content string
	}{
		{"block then answer", "<think>\nI should greet.\n</think>\n\nHello!", "I should greet.", "Hello!"},
		{"no block", "Hello <think> there", "", "Hello <think> there"},
		{"leading white space", "\n <think>why</think>ok", "why", "ok"},
		{"unclosed", "<think>still thinking", "still thinking", ""},
		{"text like a tag inside", "<think>a </thin b</think>c", "a </thin b", "c"},
		{"empty", "", "", ""},
		{"only an opening's prefix", "<thi", "", "<thi"},
	}
	for _, c := range cases {
		// Every way of cutting the reply in two, and one byte at a time.
		cuts := [][]string{{c.reply}}
		for i := 1; i < len(c.reply); i++ {
			cuts = append(cuts, []string{c.reply[:i], c.reply[i:]})
		}
		cuts = append(cuts, strings.Split(c.reply, ""))
		for _, pieces := range cuts {
			r := &reasoning{}
			var th, co strings.Builder
			for _, p := range pieces {
				a, b := r.split(p)
				th.WriteString(a)
				co.WriteString(b)
			}
			a, b := r.flush()
			th.WriteString(a)
			co.WriteString(b)
			if th.String() != c.thinking || co.String() != c.content {
				t.Errorf("%s, pieces %q: thinking %q content %q, want %q %q", c.name, pieces, th.String(), co.String(), c.thinking, c.content)
			}
		}
	}
}

func TestSpaced(t *testing.T) {
	for in, want := range map[string]string{
		`{"city":"Paris","n":1}`:            `{"city": "Paris", "n": 1}`,
		`{ "a" : [1,2 , {"b":null}] }`:      `{"a": [1, 2, {"b": null}]}`,
		`{"s":"a, b: \"c\",d"}`:             `{"s": "a, b: \"c\",d"}`,
		`{"city": "sim", "unit": "kelvin"}`: `{"city": "sim", "unit": "kelvin"}`,
		`{}`:                                `{}`,
	} {
		if got := string(spaced([]byte(in))); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

// TestOptions: each sampling option lands in its member, load options and unknown
// ones have no effect, and what the runtime cannot honour is refused naming the option.
func TestOptions(t *testing.T) {
	s, e := decodeOptions(json.RawMessage(`{"temperature": 0.5, "top_p": 0.25, "top_k": 7.0, "repeat_penalty": 1.5, "presence_penalty": 0.5,
		"frequency_penalty": -0.5, "mirostat": 2, "mirostat_tau": 4, "mirostat_eta": 0.2, "num_predict": 9, "stop": ["x", "y"],
		"num_ctx": 8192, "num_gpu": 1, "use_mmap": true, "min_p": 0, "typical_p": 1, "tfs_z": 1, "new_topic_penalty": 3}`), nil)
	if e != nil {
		t.Fatal(e)
	}
	if *s.Temperature != 0.5 || *s.TopP != 0.25 || *s.TopK != 7 || *s.RepeatPenalty != 1.5 || *s.PresencePenalty != 0.5 ||
		*s.FrequencyPenalty != -0.5 || *s.Mirostat != 2 || *s.MirostatTau != 4 || *s.MirostatEta != 0.2 || *s.MaxTokens != 9 ||
		strings.Join(s.Stop, ",") != "x,y" {
		t.Errorf("options %+v", s)
	}
	if s, e := decodeOptions(json.RawMessage(`{"num_predict": -1}`), nil); e != nil || s.MaxTokens != nil {
		t.Errorf("num_predict -1: %+v %v", s, e)
	}
	for in, says := range map[string]string{
		`{"temperature": "hot"}`:  "options.temperature must be a number",
		`{"temperature": 3}`:      "between 0 and 2",
		`{"top_k": 1.5}`:          "options.top_k must be an integer",
		`{"top_k": 2147483648}`:   "'options.top_k': 2147483648 is out of range", // the runtime's top_k is an int32
		`{"mirostat": 3}`:         "options.mirostat",
		`{"num_predict": 0}`:      "options.num_predict must be positive",
		`{"seed": 42}`:            "no sampling seed",
		`{"min_p": 0.05}`:         "options.min_p is not supported",
		`{"typical_p": 0.7}`:      "options.typical_p is not supported",
		`{"stop": [""]}`:          "options.stop[0] is empty",
		`{"stop": 3}`:             "options.stop must be an array of strings",
		`[1]`:                     "options must be an object",
		`{"repeat_penalty": 100}`: "options.repeat_penalty",
	} {
		if _, e := decodeOptions(json.RawMessage(in), nil); e == nil || e.Status != 400 || !strings.Contains(e.Message, says) {
			t.Errorf("%s: %v, want a 400 saying %q", in, e, says)
		}
	}
}

// TestCommon: format, think levels, logprobs and template are refused with why;
// keep_alive in both forms and the Python client's empty values are accepted.
func TestCommon(t *testing.T) {
	ok := []string{
		`{"model": "m", "format": "", "keep_alive": "5m", "think": false, "template": "", "options": {}}`,
		`{"model": "m", "keep_alive": -1, "format": null, "stream": false}`,
		`{"model": "m", "keep_alive": 0, "metadata": {"chat_id": "x"}, "system": "ignored member"}`,
	}
	for _, in := range ok {
		m, e := members([]byte(in), nil)
		if e == nil {
			_, e = decodeCommon(m, nil)
		}
		if e != nil {
			t.Errorf("%s: %v", in, e)
		}
	}
	for in, says := range map[string]string{
		`{"format": "json"}`:                  `format "json" is not supported`,
		`{"format": {"type": "object"}}`:      "format a JSON schema is not supported",
		`{"think": "high"}`:                   "no reasoning effort",
		`{"think": 1}`:                        "think must be a boolean",
		`{"logprobs": true}`:                  "no log probabilities",
		`{"template": "{{ .Prompt }}"}`:       "template is not supported",
		`{"keep_alive": true}`:                "keep_alive must be a duration",
		`{"stream": "yes"}`:                   "stream must be a boolean",
		`{"options": {"num_predict": "ten"}}`: "options.num_predict must be a number",
		`{"model": "m"} {"model": "n"}`:       "one JSON object",
		`[{"model": "m"}]`:                    "must be a JSON object",
	} {
		m, e := members([]byte(in), nil)
		if e == nil {
			_, e = decodeCommon(m, nil)
		}
		if e == nil || e.Status != 400 || !strings.Contains(e.Message, says) {
			t.Errorf("%s: %v, want a 400 saying %q", in, e, says)
		}
	}
}

// TestMessages: Ollama's message shape becomes the chat template's; what the runtime
// cannot take is refused naming the message.
func TestMessages(t *testing.T) {
	msgs, e := decodeMessages(json.RawMessage(`[{"role": "system", "content": "Be brief."},
		{"role": "assistant", "content": "", "thinking": "past", "tool_calls": [{"function": {"name": "f", "arguments": {"a":1,"b":"x"}}}]},
		{"role": "tool", "content": "{\"ok\": true}", "tool_name": "f"}, {"role": "user", "content": "go", "images": []}]`), nil)
	if e != nil {
		t.Fatal(e)
	}
	if len(msgs) != 4 || msgs[1].ToolCalls[0].Name != "f" || msgs[1].ToolCalls[0].Arguments != `{"a": 1, "b": "x"}` ||
		msgs[2].Name != "f" || msgs[2].Role != "tool" || msgs[3].Content != "go" {
		t.Errorf("messages %+v", msgs)
	}
	for in, says := range map[string]string{
		`[{"role": "robot", "content": "x"}]`:                                                    `messages[0].role "robot"`,
		`[{"content": "x"}]`:                                                                     "messages[0].role is required",
		`[{"role": "user", "content": "x", "images": ["aGk="]}]`:                                 "messages[0].images: images are not supported",
		`[{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]`:        "only assistant messages",
		`[{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "x"}}]}]`: "arguments must be an object",
		`[{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]`:               "name is required",
		`[{"role": "user", "content": 5}]`:                                                       "messages[0].content must be a string, not an integer",
		`[5]`:                                                                                    "messages[0] must be a message",
		`{"role": "user"}`:                                                                       "messages must be an array",
	} {
		if _, e := decodeMessages(json.RawMessage(in), nil); e == nil || e.Status != 400 || !strings.Contains(e.Message, says) {
			t.Errorf("%s: %v, want a 400 saying %q", in, e, says)
		}
	}
}
