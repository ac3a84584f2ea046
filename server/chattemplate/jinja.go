package chattemplate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/ardanlabs/jinja"

	"github.com/rkllm-operator/rkllm-operator/server/runtime"
)

// JinjaSource is a Hugging Face chat template as read from its file, not compiled. It
// answers everything about the template but the rendering itself (Name, EndOfReply,
// ToolsInPrompt, SystemPrompt, ToolResponse), so the server's supervisor holds one and
// leaves compiling and rendering, which run the template's code, to renderer processes
// (server/templatehost).
type JinjaSource struct {
	// ID names the template: "jinja:FILE".
	ID string
	// Source is the Jinja text.
	Source string
	// BOS is given to templates as bos_token (RKLLM's tokenizer adds the
	// beginning-of-sequence token itself, so "" is usual); EOS is the text of the model's
	// end-of-sequence token (eos_token).
	BOS, EOS string
}

// Name implements Template.
func (s *JinjaSource) Name() string { return s.ID }

// EndOfReply implements Template.
func (s *JinjaSource) EndOfReply() string { return s.EOS }

// ToolsInPrompt implements Template: Hugging Face templates write the tools in the
// format the model was trained on.
func (s *JinjaSource) ToolsInPrompt() bool { return true }

// ToolResponse implements Template.
func (s *JinjaSource) ToolResponse() string { return toolResponse }

// SystemPrompt implements Template.
func (s *JinjaSource) SystemPrompt(msgs []Message) string {
	sys, _ := leadingSystem(msgs)
	return strings.Join(sys, "\n\n")
}

// Jinja is a compiled Hugging Face chat template (the chat_template of a model's
// tokenizer_config.json), rendered as transformers' apply_chat_template does: messages,
// tools, add_generation_prompt, bos_token, eos_token and enable_thinking in the context,
// raise_exception and strftime_now available, JSON object keys kept in the client's
// order.
//
// Rendering is not bounded: the library has no step, output or context hooks, a
// template can loop for hours, allocate without limit, recurse until the Go stack
// overflows (a fatal error no recover catches) or panic. The server therefore renders
// only in a renderer process (server/templatehost) that is killed when it breaks a
// bound; Jinja is used in-process by that process and by tests.
type Jinja struct {
	*JinjaSource
	tmpl *jinja.Template
	// vars are extra template variables (tests fix date_string with it).
	vars map[string]jinja.Value
}

// tojsonFilter matches uses of the tojson filter. The library's own sorts object keys
// and escapes <, > and & when indenting, unlike Python's json.dumps that transformers
// uses, so templates are given pythonJSON under another name instead.
var tojsonFilter = regexp.MustCompile(`(\|\s*)tojson\b`)

const tojsonName = "rkllm_tojson"

// Compile compiles the template. Like rendering, compiling runs the library on text
// from outside (a deeply nested expression recurses in its parser), so the server
// compiles only in a renderer process.
func (s *JinjaSource) Compile() (*Jinja, error) {
	t, err := jinja.Compile(tojsonFilter.ReplaceAllString(s.Source, "${1}"+tojsonName))
	if err != nil {
		return nil, fmt.Errorf("chat template %s: %w", s.ID, err)
	}
	return &Jinja{JinjaSource: s, tmpl: t}, nil
}

// NewJinja compiles a chat template from its text (see JinjaSource for bos and eos).
func NewJinja(name, source, bos, eos string) (*Jinja, error) {
	return (&JinjaSource{ID: name, Source: source, BOS: bos, EOS: eos}).Compile()
}

// LoadJinja reads and compiles a chat template file (ReadJinja, then Compile).
func LoadJinja(path, eos string) (*Jinja, error) {
	src, err := ReadJinja(path, eos)
	if err != nil {
		return nil, err
	}
	return src.Compile()
}

// ReadJinja reads a chat template file: a Jinja template, or a tokenizer_config.json
// (its chat_template, the "default" one when there are several, and its eos_token).
// eos, when not empty, overrides the file's end-of-sequence text. It does not compile
// the template.
func ReadJinja(path, eos string) (*JinjaSource, error) {
	raw, err := runtime.ReadRegularFile(path)
	if err != nil {
		return nil, fmt.Errorf("chat template file: %w", err)
	}
	source := string(raw)
	name := "jinja:" + filepath.Base(path)
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' && json.Valid(t) {
		var cfg struct {
			ChatTemplate json.RawMessage `json:"chat_template"`
			EOSToken     json.RawMessage `json:"eos_token"`
		}
		if err := json.Unmarshal(t, &cfg); err != nil {
			return nil, fmt.Errorf("chat template file %s: %w", path, err)
		}
		if source, err = pickTemplate(cfg.ChatTemplate); err != nil {
			return nil, fmt.Errorf("chat template file %s: %w", path, err)
		}
		if eos == "" {
			eos = tokenText(cfg.EOSToken)
		}
	}
	if eos == "" {
		return nil, fmt.Errorf("chat template file %s: the end-of-sequence text is unknown: set --chat-template-eos (the model's eos_token, such as <|im_end|>)", path)
	}
	return &JinjaSource{ID: name, Source: source, EOS: eos}, nil
}

// pickTemplate takes the chat_template of a tokenizer_config.json: a string, or a list
// of {name, template} of which "default" (else the first) is used.
func pickTemplate(raw json.RawMessage) (string, error) {
	if len(raw) == 0 {
		return "", errors.New("it has no chat_template")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var named []struct{ Name, Template string }
	if err := json.Unmarshal(raw, &named); err != nil || len(named) == 0 {
		return "", errors.New("chat_template must be a string or a list of {name, template}")
	}
	for _, n := range named {
		if n.Name == "default" {
			return n.Template, nil
		}
	}
	return named[0].Template, nil
}

// tokenText reads a special token of a tokenizer_config.json: a string or {content}.
func tokenText(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var tok struct{ Content string }
	_ = json.Unmarshal(raw, &tok)
	return tok.Content
}

// Render implements Template. ctx is not consulted: an in-process render cannot be
// stopped (see Jinja).
func (j *Jinja) Render(_ context.Context, c *Conversation) (string, error) {
	msgs := c.Messages
	if c.OmitSystem {
		_, msgs = leadingSystem(msgs)
	}
	list := make([]jinja.Value, 0, len(msgs))
	for _, m := range msgs {
		list = append(list, messageValue(m))
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(list),
		"add_generation_prompt": jinja.NewBool(true),
		"bos_token":             jinja.NewString(j.BOS),
		"eos_token":             jinja.NewString(j.EOS),
		tojsonName:              jinja.NewCallable(tojsonName, pythonJSON),
	}
	if len(c.Tools) > 0 {
		v, err := jsonValue(c.Tools)
		if err != nil {
			return "", fmt.Errorf("%w: tools: %v", ErrInvalid, err)
		}
		data["tools"] = v
	}
	if c.EnableThinking != nil {
		data["enable_thinking"] = jinja.NewBool(*c.EnableThinking)
	}
	for k, v := range j.vars {
		data[k] = v
	}
	out, err := j.tmpl.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("%w: the chat template %s failed: %v", ErrInvalid, j.ID, err)
	}
	return out, nil
}

// messageValue builds a message as transformers passes it: keys that are absent stay
// absent (templates test `'tool_calls' in message`), and tool-call arguments are an
// object when they are JSON.
func messageValue(m Message) jinja.Value {
	v := jinja.NewDict()
	d := v.AsDict()
	d.Set("role", jinja.NewString(m.Role))
	d.Set("content", jinja.NewString(m.Content))
	if m.Name != "" {
		d.Set("name", jinja.NewString(m.Name))
	}
	if m.ToolCallID != "" {
		d.Set("tool_call_id", jinja.NewString(m.ToolCallID))
	}
	if len(m.ToolCalls) > 0 {
		calls := make([]jinja.Value, 0, len(m.ToolCalls))
		for _, tc := range m.ToolCalls {
			args := jinja.NewString(tc.Arguments)
			if a, err := jsonValue([]byte(tc.Arguments)); err == nil && a.IsDict() {
				args = a
			}
			fn := jinja.NewDict()
			fn.AsDict().Set("name", jinja.NewString(tc.Name))
			fn.AsDict().Set("arguments", args)
			call := jinja.NewDict()
			call.AsDict().Set("id", jinja.NewString(tc.ID))
			call.AsDict().Set("type", jinja.NewString("function"))
			call.AsDict().Set("function", fn)
			calls = append(calls, call)
		}
		d.Set("tool_calls", jinja.NewList(calls))
	}
	return v
}

// jsonValue converts JSON into template values, keeping object keys in order.
func jsonValue(b []byte) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return jinja.Undefined(), err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return jinja.Undefined(), errors.New("trailing data after the JSON value")
	}
	return v, nil
}

// maxDepth bounds the nesting of JSON converted for a template.
const maxDepth = 64

func decodeValue(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > maxDepth {
		return jinja.Undefined(), fmt.Errorf("JSON nested deeper than %d levels", maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		if t == '{' {
			v := jinja.NewDict()
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				e, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				v.AsDict().Set(k.(string), e)
			}
			_, err := dec.Token()
			return v, err
		}
		var items []jinja.Value
		for dec.More() {
			e, err := decodeValue(dec, depth+1)
			if err != nil {
				return jinja.Undefined(), err
			}
			items = append(items, e)
		}
		_, err := dec.Token()
		return jinja.NewList(items), err
	case string:
		return jinja.NewString(t), nil
	case json.Number:
		if i, err := t.Int64(); err == nil && !strings.ContainsAny(t.String(), ".eE") {
			return jinja.NewInt(i), nil
		}
		f, err := t.Float64()
		return jinja.NewFloat(f), err
	case bool:
		return jinja.NewBool(t), nil
	}
	return jinja.None(), nil
}

// pythonJSON is the tojson filter transformers defines: json.dumps(x,
// ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys).
func pythonJSON(args []jinja.Value, kwargs map[string]jinja.Value) (jinja.Value, error) {
	if len(args) == 0 {
		return jinja.Undefined(), errors.New("tojson needs a value")
	}
	e := pyEncoder{item: ", ", key: ": "}
	if v, ok := kwargs["indent"]; ok && !v.IsNone() && !v.IsUndefined() {
		if !v.IsInt() {
			return jinja.Undefined(), errors.New("tojson: indent must be an integer")
		}
		e.indent, e.item = strings.Repeat(" ", int(v.AsInt())), ","
	}
	if v, ok := kwargs["separators"]; ok && v.IsList() && v.AsList().Len() == 2 {
		e.item, e.key = v.AsList().Get(0).String(), v.AsList().Get(1).String()
	}
	if v, ok := kwargs["ensure_ascii"]; ok {
		e.ascii = v.IsTruthy()
	}
	if v, ok := kwargs["sort_keys"]; ok {
		e.sort = v.IsTruthy()
	}
	var b strings.Builder
	if err := e.encode(&b, args[0], 0); err != nil {
		return jinja.Undefined(), err
	}
	return jinja.NewString(b.String()), nil
}

// pyEncoder writes JSON as Python's json.dumps does.
type pyEncoder struct {
	indent    string
	item, key string
	ascii     bool
	sort      bool
}

func (e *pyEncoder) newline(b *strings.Builder, level int) {
	if e.indent == "" {
		return
	}
	b.WriteByte('\n')
	for range level {
		b.WriteString(e.indent)
	}
}

func (e *pyEncoder) encode(b *strings.Builder, v jinja.Value, level int) error {
	if level > maxDepth {
		return fmt.Errorf("tojson: nested deeper than %d levels", maxDepth)
	}
	switch {
	case v.IsNone() || v.IsUndefined():
		b.WriteString("null")
	case v.IsBool():
		b.WriteString(strconv.FormatBool(v.AsBool()))
	case v.IsInt():
		b.WriteString(strconv.FormatInt(v.AsInt(), 10))
	case v.IsFloat():
		b.WriteString(pyFloat(v.AsFloat()))
	case v.IsString():
		e.str(b, v.AsString())
	case v.IsList():
		return e.list(b, v.AsList().Items, level)
	case v.IsDict():
		return e.dict(b, v.AsDict(), level)
	default:
		return fmt.Errorf("tojson: cannot encode %s", v.String())
	}
	return nil
}

func (e *pyEncoder) list(b *strings.Builder, items []jinja.Value, level int) error {
	if len(items) == 0 {
		b.WriteString("[]")
		return nil
	}
	b.WriteByte('[')
	for i, it := range items {
		if i > 0 {
			b.WriteString(e.item)
		}
		e.newline(b, level+1)
		if err := e.encode(b, it, level+1); err != nil {
			return err
		}
	}
	e.newline(b, level)
	b.WriteByte(']')
	return nil
}

func (e *pyEncoder) dict(b *strings.Builder, d *jinja.Dict, level int) error {
	keys := d.OrderedKeys()
	if e.sort {
		keys = append([]string(nil), keys...)
		sort.Strings(keys)
	}
	if len(keys) == 0 {
		b.WriteString("{}")
		return nil
	}
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteString(e.item)
		}
		e.newline(b, level+1)
		e.str(b, k)
		b.WriteString(e.key)
		val, _ := d.Get(k)
		if err := e.encode(b, val, level+1); err != nil {
			return err
		}
	}
	e.newline(b, level)
	b.WriteByte('}')
	return nil
}

// str writes a string as json.dumps does: only ", \ and control characters escaped
// (and, with ensure_ascii, everything beyond ASCII as \uXXXX).
func (e *pyEncoder) str(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20 || (e.ascii && r == 0x7f):
				fmt.Fprintf(b, `\u%04x`, r)
			case e.ascii && r > 0x7f:
				if r > 0xffff {
					r -= 0x10000
					fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// pyFloat formats a float as Python's repr: the shortest digits, positional between
// 1e-4 and 1e16, always with a '.' or an exponent.
func pyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	mant, expStr, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expStr)
	if exp < -4 || exp >= 16 {
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		return fmt.Sprintf("%se%s%02d", mant, sign, exp)
	}
	out := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(out, ".") {
		out += ".0"
	}
	return out
}
