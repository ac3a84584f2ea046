package generation

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// Finish reasons, as OpenAI names them.
const (
	FinishStop      = "stop"
	FinishLength    = "length"
	FinishToolCalls = "tool_calls"
)

// ToolCall is a function call the model made.
type ToolCall struct {
	// ID is "call_" and 24 random letters and digits.
	ID   string
	Name string
	// Arguments is the JSON text of the arguments as the model wrote them (a JSON
	// string's content when the model wrote them as a string).
	Arguments string
}

const (
	toolCallOpen  = "<tool_call>"
	toolCallClose = "</tool_call>"
)

// output turns a run's deliveries into what the client gets: text cut at the first
// stop sequence, the end-of-reply token left out, <tool_call> blocks turned into tool
// calls, and text held back while it may still become one of those. It is used by one
// goroutine.
type output struct {
	stops      []string
	tools      bool   // parse <tool_call> blocks
	endOfReply string // the end-of-sequence text, left out when it is delivered
	maxTokens  int    // > 0: stop after this many tokens (the server enforces max_tokens)
	// opening is given out in front of the first content: the reasoning block's opening
	// that the prompt ended with (chattemplate.OpenReasoning), so the client sees the
	// block whole.
	opening string

	raw      strings.Builder // joined text so far
	pending  []byte          // bytes of a WAITING delivery
	emitted  int             // bytes of raw given out as content
	tokens   int
	toolAt   int // where the first <tool_call> starts in raw, -1 before
	stopped  string
	perf     *runtime.PerfStat
	cutShort bool // stopped by the server (stop sequence or max tokens)
}

func newOutput(stops []string, tools bool, endOfReply string, maxTokens int) *output {
	return &output{stops: stops, tools: tools, endOfReply: endOfReply, maxTokens: maxTokens, toolAt: -1}
}

// add takes one delivery and returns the content that may be given out now, and
// whether the run should be stopped (a stop sequence appeared, or max_tokens was
// reached).
func (o *output) add(d runtime.Delivery) (string, bool) {
	r, ok := o.token(d)
	if !ok {
		return "", false
	}
	if d.State == runtime.StateWaiting {
		o.pending = append(o.pending, r.Text...)
		return "", o.checkMax()
	}
	o.raw.Write(o.pending)
	o.pending = o.pending[:0]
	o.raw.WriteString(r.Text)
	text := o.raw.String()
	if o.tools && o.toolAt < 0 {
		if i := strings.Index(text, toolCallOpen); i >= 0 && o.stopBefore(text, i) < 0 {
			o.toolAt = i
		}
	}
	limit := len(text)
	if o.toolAt >= 0 {
		limit = o.toolAt
	}
	if i := o.stopBefore(text, limit); i >= 0 {
		o.stopped, o.cutShort = FinishStop, true
		return o.emit(text, i), true
	}
	if o.toolAt >= 0 {
		return o.emit(text, o.toolAt), o.checkMax()
	}
	return o.emit(text, len(text)-o.holdBack(text)), o.checkMax()
}

// token takes the perf counters of the FINISH delivery (also after a stop: they give
// the prompt's token count) and counts a token delivery; ok is false for a delivery
// that brings no text to give out.
func (o *output) token(d runtime.Delivery) (r runtime.Result, ok bool) {
	if d.State == runtime.StateFinish {
		if len(d.Results) > 0 {
			p := d.Results[0].Perf
			o.perf = &p
		}
		return r, false
	}
	if o.stopped != "" || d.State != runtime.StateNormal && d.State != runtime.StateWaiting || len(d.Results) == 0 {
		return r, false
	}
	r = d.Results[0]
	if r.TokenID >= 0 {
		o.tokens++
	}
	return r, true
}

// checkMax reports (once) that the server-enforced max_tokens is reached.
func (o *output) checkMax() bool {
	if o.maxTokens > 0 && o.tokens >= o.maxTokens && o.stopped == "" {
		o.stopped, o.cutShort = FinishLength, true
		return true
	}
	return false
}

// stopBefore returns where the earliest stop sequence starts in text (searching what
// was not given out yet, and ending before limit), or -1.
func (o *output) stopBefore(text string, limit int) int {
	best := -1
	from := max(o.emitted-maxLen(o.stops), 0)
	for _, s := range o.stops {
		if i := strings.Index(text[from:], s); i >= 0 && from+i < limit && (best < 0 || from+i < best) {
			best = from + i
		}
	}
	return best
}

func maxLen(ss []string) int {
	n := 0
	for _, s := range ss {
		n = max(n, len(s))
	}
	return n
}

// holdBack is how many bytes at the end of text may start a stop sequence, a tool
// call or the end-of-reply text, and so are not given out yet.
func (o *output) holdBack(text string) int {
	marks := append([]string(nil), o.stops...)
	if o.tools {
		marks = append(marks, toolCallOpen)
	}
	if o.endOfReply != "" {
		marks = append(marks, o.endOfReply)
	}
	n := 0
	for _, m := range marks {
		for k := min(len(m), len(text)); k > n; k-- {
			if strings.HasSuffix(text, m[:k]) {
				n = k
				break
			}
		}
	}
	return n
}

func (o *output) emit(text string, upto int) string {
	if upto <= o.emitted {
		return ""
	}
	s := text[o.emitted:upto]
	if o.emitted == 0 {
		s = o.opening + s
	}
	o.emitted = upto
	return s
}

// finish ends the output. aborted tells that the run was stopped early (by the server
// for a stop sequence or max_tokens), and ranOut that it reached max_new_tokens.
func (o *output) finish(ranOut bool) Result {
	text := o.raw.String()
	if o.stopped != "" {
		return Result{Finish: o.stopped}
	}
	if o.toolAt >= 0 {
		if calls, ok := parseToolCalls(text[o.toolAt:]); ok {
			return Result{Rest: o.emit(text, o.toolAt), ToolCalls: calls, Finish: FinishToolCalls}
		}
	}
	end := len(text)
	if o.endOfReply != "" && strings.HasSuffix(text, o.endOfReply) {
		end -= len(o.endOfReply)
	}
	r := Result{Rest: o.emit(text, end), Finish: FinishStop}
	if ranOut {
		r.Finish = FinishLength
	}
	return r
}

// parseToolCalls reads <tool_call>{"name": ..., "arguments": ...}</tool_call> blocks
// (white space around them allowed). The arguments keep the model's JSON text; ok is
// false when the text is anything else, so it is given out as content instead.
func parseToolCalls(s string) ([]ToolCall, bool) {
	var calls []ToolCall
	rest := strings.TrimSpace(s)
	for rest != "" {
		body, ok := strings.CutPrefix(rest, toolCallOpen)
		if !ok {
			return nil, false
		}
		inner, after, ok := strings.Cut(body, toolCallClose)
		if !ok {
			return nil, false
		}
		var call struct {
			Name       string          `json:"name"`
			Arguments  json.RawMessage `json:"arguments"`
			Parameters json.RawMessage `json:"parameters"`
		}
		if err := json.Unmarshal([]byte(strings.TrimSpace(inner)), &call); err != nil || call.Name == "" {
			return nil, false
		}
		args := call.Arguments
		if len(args) == 0 {
			args = call.Parameters
		}
		argText := string(bytes.TrimSpace(args))
		var str string
		if json.Unmarshal(args, &str) == nil {
			argText = str // arguments given as a JSON string already
		}
		if argText == "" || argText == "null" {
			argText = "{}"
		}
		calls = append(calls, ToolCall{ID: NewID("call_"), Name: call.Name, Arguments: argText})
		rest = strings.TrimSpace(after)
	}
	return calls, len(calls) > 0
}

const idChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// NewID returns prefix and 24 random letters and digits, as OpenAI's ids look.
func NewID(prefix string) string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = idChars[int(b[i])%len(idChars)]
	}
	return prefix + string(b[:])
}
