// The checks in this file decide whether the runtime could read past what a caller
// gave it. The server applies them to a client's request before it is queued (to
// answer with the member at fault) and the binding applies them again to every call,
// with the handle's own limits, as the last line before C. They build without cgo.

package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"strings"
	"syscall"
)

// Limits are what the loaded model takes. Counts are bounded by them, not only by what
// the request says about itself, and every product is checked by division, so no
// count a client sends can overflow into a small number.
type Limits struct {
	// Known is false when no model is loaded: only the checks that need no model
	// apply (the call fails later for want of a model).
	Known bool
	// ABI is the layout the library speaks ("" skips the ABI checks).
	ABI ABI
	// NBatch is the number of inputs every run takes (n_batch at init).
	NBatch int
	// MaxContextLen bounds the positions of one input (max_context_len at init).
	MaxContextLen int
	// EmbedWidth is the number of floats in one embedding row: the model's hidden
	// size. 0 means unknown, which refuses every input that carries embeddings (the
	// runtime reads rows of its own width, whatever the caller sent).
	EmbedWidth int
	// VocabSize is the model's vocabulary size: token ids are 0 to VocabSize-1 (the
	// runtime looks each one up in a table that long). 0 means unknown, which refuses
	// every token input.
	VocabSize int
	// Loras are the names of the LoRA adapters loaded; nil skips the check.
	Loras []string
}

// ErrInvalidInput is wrapped by every *InputError.
var ErrInvalidInput = errors.New("invalid input")

// InputError is an input or a run parameter that the runtime would misread: a count
// that does not match the array it counts, a count beyond the model's limits, a
// string with a NUL byte. Field is the member's path, spelled as the C structs
// (and the JSON-RPC API) name it, such as "embed_input.embed".
type InputError struct {
	// Input is the index of the input in a batch, or -1 when Field is not part of an
	// input (run parameters, cross-attention parameters).
	Input  int
	Field  string
	Reason string
	// NoWidth is set when the input was refused because the embedding width is not
	// known (Limits.EmbedWidth 0), not because of what it holds; NoVocab likewise for
	// the vocabulary size (Limits.VocabSize 0).
	NoWidth, NoVocab bool
}

func (e *InputError) Error() string {
	if e.Input >= 0 {
		return fmt.Sprintf("input %d: %s %s", e.Input, e.Field, e.Reason)
	}
	return e.Field + " " + e.Reason
}

// Unwrap makes errors.Is(err, ErrInvalidInput) true.
func (e *InputError) Unwrap() error { return ErrInvalidInput }

func inputErr(field, format string, args ...any) *InputError {
	return &InputError{Input: -1, Field: field, Reason: fmt.Sprintf(format, args...)}
}

// CheckCString reports a string that cannot cross into C: a C string ends at its
// first NUL byte, so the runtime would read less than the caller sent.
func CheckCString(field, s string) error {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return inputErr(field, "contains a NUL character (\\u0000) at byte %d; a C string ends there, so the runtime would not read the rest", i)
	}
	return nil
}

// CheckJSONStrings reports a JSON document (function tools) holding a string with a
// NUL character (the escape \u0000, in a key or a value): the runtime decodes the
// document and reads its strings (a tool's name) as C strings, which end there. A
// document that is not JSON is left to the caller's own check.
func CheckJSONStrings(field, doc string) error {
	if !strings.Contains(doc, `\u0000`) {
		return nil // the only way a NUL gets into JSON text that has none itself
	}
	dec := json.NewDecoder(strings.NewReader(doc))
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		if s, ok := tok.(string); ok {
			if i := strings.IndexByte(s, 0); i >= 0 {
				return inputErr(field, "holds the string %q with a NUL character (\\u0000) at byte %d; the runtime reads the strings of this JSON as C strings, which end there", s[:i], i)
			}
		}
	}
}

// CheckInputs checks the inputs of one run: one per batch entry, each within the
// limits.
func CheckInputs(inputs []Input, l Limits) error {
	if len(inputs) == 0 {
		return inputErr("input", "is required")
	}
	if l.Known && l.NBatch > 0 && len(inputs) != l.NBatch {
		if l.NBatch == 1 {
			return inputErr("input", "is an array of %d inputs, but the model was loaded with n_batch 1: send one input object", len(inputs))
		}
		return inputErr("input", "holds %d inputs, but the model was loaded with n_batch %d: the runtime reads exactly n_batch inputs", len(inputs), l.NBatch)
	}
	for i := range inputs {
		if err := CheckInput(&inputs[i], l); err != nil {
			var ie *InputError
			if errors.As(err, &ie) {
				ie.Input = i
			}
			return err
		}
	}
	return nil
}

// CheckInput checks one input against its type, the ABI and the limits.
func CheckInput(in *Input, l Limits) error {
	if err := CheckCString("role", in.Role); err != nil {
		return err
	}
	switch in.Type {
	case InputPrompt:
		return CheckCString("prompt_input", in.Prompt)
	case InputToken:
		return checkTokens(in.TokenIDs, l)
	case InputEmbed:
		return checkEmbed(in, l)
	case InputMultimodal:
		return checkMultimodal(&in.Multimodal, l)
	}
	return inputErr("input_type", "is %d, not an RKLLMInputType (0-3)", in.Type)
}

func checkTokens(ids []int32, l Limits) error {
	if len(ids) == 0 {
		return inputErr("token_input.input_ids", "must hold at least one token id")
	}
	if l.Known && l.MaxContextLen > 0 && len(ids) > l.MaxContextLen {
		return inputErr("token_input.input_ids", "holds %d token ids, more than the model's max_context_len (%d)", len(ids), l.MaxContextLen)
	}
	for i, id := range ids {
		if id < 0 {
			return inputErr(fmt.Sprintf("token_input.input_ids[%d]", i), "is %d: token ids are vocabulary positions, not negative", id)
		}
	}
	if !l.Known {
		return nil
	}
	if l.VocabSize <= 0 {
		e := inputErr("token_input.input_ids", "cannot be checked: the model's vocabulary size is not known, so token inputs are refused")
		e.NoVocab = true
		return e
	}
	for i, id := range ids {
		if int(id) >= l.VocabSize {
			return inputErr(fmt.Sprintf("token_input.input_ids[%d]", i), "is %d, past the model's vocabulary: token ids are 0 to %d (vocab_size %d)", id, l.VocabSize-1, l.VocabSize)
		}
	}
	return nil
}

// rows checks that floats holds exactly want rows of the embedding width. want has
// been bounded by max_context_len already, so only division is needed.
func rows(field string, floats, want int, what string, l Limits) error {
	if !l.Known {
		return nil
	}
	if l.EmbedWidth <= 0 {
		e := inputErr(field, "cannot be checked: the model's embedding width is not known, so inputs that carry embeddings are refused")
		e.NoWidth = true
		return e
	}
	if floats%l.EmbedWidth != 0 || floats/l.EmbedWidth != want {
		return inputErr(field, "holds %d floats, but %s is %d rows of the model's embedding width %d: %d floats are needed",
			floats, what, want, l.EmbedWidth, want*l.EmbedWidth)
	}
	return nil
}

func checkEmbed(in *Input, l Limits) error {
	n := in.NTokens
	switch {
	case n < 1:
		return inputErr("embed_input.n_tokens", "must be at least 1 (the number of embedding rows), got %d", n)
	case l.Known && l.MaxContextLen > 0 && n > l.MaxContextLen:
		return inputErr("embed_input.n_tokens", "is %d, more than the model's max_context_len (%d)", n, l.MaxContextLen)
	case len(in.Embed) == 0:
		return inputErr("embed_input.embed", "must hold n_tokens rows of the embedding width")
	}
	return rows("embed_input.embed", len(in.Embed), n, fmt.Sprintf("n_tokens (%d)", n), l)
}

// count is one count of a multimodal part, with its member's name.
type count struct {
	field string
	v     int
}

// positions bounds the product of counts (images x tokens, videos x frames x tokens)
// by limit, dividing instead of multiplying, and returns the product.
func positions(limit int, counts []count) (int, error) {
	p := 1
	for _, c := range counts {
		if c.v < 1 {
			return 0, inputErr(c.field, "must be at least 1 when there are images or videos, got %d", c.v)
		}
		if c.v > limit/p {
			return 0, inputErr(c.field, "is %d: the input would fill more positions than the model's max_context_len (%d)", c.v, limit)
		}
		p *= c.v
	}
	return p, nil
}

// maxCount bounds a count when no model is loaded: what C's size_t and the runtime's
// int positions can hold.
const maxCount = math.MaxInt32

func checkMultimodal(m *MultimodalInput, l Limits) error {
	if m.Prompt == "" {
		return inputErr("multimodal_input.prompt", "is required: text with one <image> per image (and <video> per video)")
	}
	for _, s := range []struct{ field, v string }{
		{"multimodal_input.prompt", m.Prompt},
		{"multimodal_input.image_start", m.ImageStart}, {"multimodal_input.image_end", m.ImageEnd},
		{"multimodal_input.image_content", m.ImageContent}, {"multimodal_input.video_start", m.VideoStart},
		{"multimodal_input.video_end", m.VideoEnd}, {"multimodal_input.video_content", m.VideoContent},
	} {
		if err := CheckCString(s.field, s.v); err != nil {
			return err
		}
	}
	if err := checkSizes(m); err != nil {
		return err
	}
	if l.ABI == ABI12 {
		if err := checkMultimodal12(m); err != nil {
			return err
		}
	}
	limit := maxCount
	if l.Known && l.MaxContextLen > 0 {
		limit = l.MaxContextLen
	}
	const mm = "multimodal_input."
	image, err := part(m.Prompt, "<image>", mm+"image_embed", m.ImageEmbed, limit, l,
		count{mm + "n_image", m.NImage}, count{mm + "n_image_tokens", m.NImageTokens})
	if err != nil {
		return err
	}
	video, err := part(m.Prompt, "<video>", mm+"video_embed", m.VideoEmbed, limit, l,
		count{mm + "n_video", m.NVideo}, count{mm + "n_frame_per_video", m.NFramePerVideo}, count{mm + "n_frame_tokens", m.NFrameTokens})
	if err != nil {
		return err
	}
	if image > limit-video {
		return inputErr("multimodal_input", "images (%d positions) and videos (%d positions) together fill more than the model's max_context_len (%d)", image, video, limit)
	}
	return nil
}

// checkSizes refuses negative counts and sizes: C reads them as size_t, where -1 is
// 2^64-1.
func checkSizes(m *MultimodalInput) error {
	for _, c := range []struct {
		field string
		v     int
	}{
		{"n_image", m.NImage}, {"n_image_tokens", m.NImageTokens}, {"image_width", m.ImageWidth},
		{"image_height", m.ImageHeight}, {"n_video", m.NVideo}, {"n_frame_per_video", m.NFramePerVideo},
		{"n_frame_tokens", m.NFrameTokens}, {"frame_width", m.FrameWidth}, {"frame_height", m.FrameHeight},
	} {
		if c.v < 0 || c.v > maxCount {
			return inputErr("multimodal_input."+c.field, "must be between 0 and %d, got %d", maxCount, c.v)
		}
	}
	return nil
}

// part checks the image or the video part of a multimodal input and returns the
// positions its embeddings fill: the prompt's tags match the first count, the counts
// stay within limit, and the embedding holds exactly the product of the counts in rows.
func part(prompt, tag, embedField string, embed []float32, limit int, l Limits, counts ...count) (int, error) {
	n := counts[0]
	if tags := strings.Count(prompt, tag); tags != n.v {
		return 0, inputErr(n.field, "is %d, but the prompt has %d %s tags (one each)", n.v, tags, tag)
	}
	if n.v == 0 {
		if len(embed) > 0 {
			return 0, inputErr(embedField, "holds %d floats, but %s is 0", len(embed), n.field)
		}
		return 0, nil
	}
	p, err := positions(limit, counts)
	if err != nil {
		return 0, err
	}
	if len(embed) == 0 {
		return 0, inputErr(embedField, "is empty, but %s is %d", n.field, n.v)
	}
	return p, rows(embedField, len(embed), p, fmt.Sprintf("the product of its counts (%d positions)", p), l)
}

// checkMultimodal12 refuses the fields that only ABI 1.3's multimodal input has.
func checkMultimodal12(m *MultimodalInput) error {
	video := m.NVideo != 0 || len(m.VideoEmbed) != 0 || m.NFrameTokens != 0 || m.NFramePerVideo != 0 ||
		m.VideoStart != "" || m.VideoEnd != "" || m.VideoContent != "" || m.FrameWidth != 0 || m.FrameHeight != 0
	if video || strings.Contains(m.Prompt, "<video>") {
		return &UnsupportedError{Feature: "video input", ABI: ABI12}
	}
	if m.ImageStart != "" || m.ImageEnd != "" || m.ImageContent != "" {
		return &UnsupportedError{Feature: "ImageStart/ImageEnd/ImageContent in the input (1.2 takes them as Param.ImgStart/ImgEnd/ImgContent)", ABI: ABI12}
	}
	return nil
}

// CheckInferParams checks a run's parameters against the ABI and the loaded adapters.
func CheckInferParams(p *InferParams, l Limits) error {
	if p.Mode < InferGenerate || p.Mode > InferGetLogits {
		return inputErr("infer_params.mode", "is %d, not an RKLLMInferMode (0-2)", p.Mode)
	}
	if l.ABI == ABI12 && p.Sampling != nil {
		return &UnsupportedError{Feature: "per-run sampling parameters", ABI: l.ABI}
	}
	if l.ABI == ABI12 && p.MaxNewTokens > 0 {
		return &UnsupportedError{Feature: "per-run max_new_tokens", ABI: l.ABI}
	}
	if pc := p.PromptCache; pc != nil {
		if pc.Save && pc.Path == "" {
			return inputErr("infer_params.prompt_cache_params.prompt_cache_path", "is required to save the prompt cache")
		}
		if err := CheckCString("infer_params.prompt_cache_params.prompt_cache_path", pc.Path); err != nil {
			return err
		}
	}
	return checkLora(p.LoraAdapterName, l)
}

// checkLora checks a run's adapter name: a C string, and one of the adapters loaded.
func checkLora(name string, l Limits) error {
	const lora = "infer_params.lora_params.lora_adapter_name"
	if err := CheckCString(lora, name); err != nil {
		return err
	}
	if name == "" || !l.Known || l.Loras == nil || contains(l.Loras, name) {
		return nil
	}
	if len(l.Loras) == 0 {
		return inputErr(lora, "is %q, but no LoRA adapter is loaded", name)
	}
	return inputErr(lora, "is %q, which is not a loaded LoRA adapter (loaded: %s)", name, strings.Join(l.Loras, ", "))
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// CheckKVRanges checks the ranges of rkllm_clear_kv_cache: the runtime reads one start
// and one end per batch entry, so there must be exactly n_batch of each (or none: clear
// all), each range inside 0 <= start <= end.
func CheckKVRanges(start, end []int32, l Limits) error {
	switch {
	case (start == nil) != (end == nil) || len(start) != len(end):
		return inputErr("end_pos", "start_pos and end_pos go together: one entry each per batch entry, or neither (clear all)")
	case start == nil:
		return nil
	case l.Known && l.NBatch > 0 && len(start) != l.NBatch:
		return inputErr("start_pos", "holds %d positions, but the model was loaded with n_batch %d: the runtime reads one per batch entry", len(start), l.NBatch)
	}
	for i := range start {
		if start[i] < 0 || end[i] < start[i] {
			return inputErr(fmt.Sprintf("start_pos[%d]", i), "the range [%d, %d) is not valid: 0 <= start <= end", start[i], end[i])
		}
		if l.Known && l.MaxContextLen > 0 && int(end[i]) > l.MaxContextLen {
			return inputErr(fmt.Sprintf("end_pos[%d]", i), "is %d, past the model's max_context_len (%d): the cache has no such position", end[i], l.MaxContextLen)
		}
	}
	return nil
}

// CheckCrossAttn checks cross-attention parameters: the runtime reads num_tokens mask
// values and positions and num_tokens rows of the embedding width from each cache.
func CheckCrossAttn(p *CrossAttnParams, l Limits) error {
	const f = "cross_attn_params."
	if err := crossAttnCounts(p, l); err != nil {
		return err
	}
	n := p.NumTokens
	if !l.Known {
		if len(p.EncoderKCache)%n != 0 || len(p.EncoderVCache) != len(p.EncoderKCache) {
			return inputErr(f+"encoder_v_cache", "encoder_k_cache and encoder_v_cache hold num_tokens rows each, got %d and %d floats", len(p.EncoderKCache), len(p.EncoderVCache))
		}
		return nil
	}
	for i, pos := range p.EncoderPos {
		field := fmt.Sprintf("%sencoder_pos[%d]", f, i)
		if pos < 0 {
			return inputErr(field, "is %d: positions are not negative", pos)
		}
		if l.MaxContextLen > 0 && int(pos) >= l.MaxContextLen {
			return inputErr(field, "is %d: positions are 0 to the model's max_context_len minus 1 (%d)", pos, l.MaxContextLen-1)
		}
	}
	what := fmt.Sprintf("num_tokens (%d)", n)
	if err := rows(f+"encoder_k_cache", len(p.EncoderKCache), n, what, l); err != nil {
		return err
	}
	return rows(f+"encoder_v_cache", len(p.EncoderVCache), n, what, l)
}

// crossAttnCounts checks num_tokens against the model and the arrays it counts.
func crossAttnCounts(p *CrossAttnParams, l Limits) error {
	const f = "cross_attn_params."
	n := p.NumTokens
	switch {
	case n < 1:
		return inputErr(f+"num_tokens", "must be at least 1, got %d", n)
	case n > math.MaxInt32 || (l.Known && l.MaxContextLen > 0 && n > l.MaxContextLen):
		return inputErr(f+"num_tokens", "is %d, more than the model's max_context_len (%d)", n, l.MaxContextLen)
	case len(p.EncoderMask) != n:
		return inputErr(f+"encoder_mask", "holds %d values, but num_tokens is %d", len(p.EncoderMask), n)
	case len(p.EncoderPos) != n:
		return inputErr(f+"encoder_pos", "holds %d values, but num_tokens is %d", len(p.EncoderPos), n)
	case len(p.EncoderKCache) == 0:
		return inputErr(f+"encoder_k_cache", "must hold num_tokens rows of the embedding width")
	case len(p.EncoderVCache) == 0:
		return inputErr(f+"encoder_v_cache", "must hold num_tokens rows of the embedding width")
	}
	return nil
}

// CheckFile refuses a path the runtime would open (a model, a LoRA adapter, a prompt
// cache) that exists but is not a regular file: opening a FIFO or a device blocks the
// runtime's call for as long as nothing writes to it, and a folder or a socket fails
// it. A path that does not exist passes: the runtime reports that itself.
func CheckFile(path string) error {
	st, err := os.Stat(path)
	if err != nil || st.Mode().IsRegular() {
		return nil
	}
	return fmt.Errorf("%s is %s, not a regular file", path, FileKind(st.Mode()))
}

// ReadRegularFile reads a file the server is configured with (a configuration file, a
// chat template, API keys), refusing one that is not a regular file: a FIFO would block
// the read (and with it the server's start, or its shutdown) until something writes
// to it, and a device may never end. It opens without blocking and checks what it
// opened, so the file cannot be swapped in between.
func ReadRegularFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is %s, not a regular file", path, FileKind(st.Mode()))
	}
	return io.ReadAll(f)
}

// FileKind names what a file that is not a regular file is.
func FileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a folder"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "a special file (" + m.Type().String() + ")"
}
