package ollama

import "encoding/json"

// Responses, with members as Ollama's API writes them.

// Message is a chat message of a response.
type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
}

// ToolCall is a function call of the model, its arguments an object.
type ToolCall struct {
	Function ToolCallFunction `json:"function"`
}

// ToolCallFunction names the function and its arguments.
type ToolCallFunction struct {
	Index     int             `json:"index"`
	Name      string          `json:"name"`
	Arguments json.RawMessage `json:"arguments"`
}

// Metrics are the counters of a finished run, durations in nanoseconds.
type Metrics struct {
	TotalDuration      int64 `json:"total_duration,omitempty"`
	LoadDuration       int64 `json:"load_duration,omitempty"`
	PromptEvalCount    int   `json:"prompt_eval_count,omitempty"`
	PromptEvalDuration int64 `json:"prompt_eval_duration,omitempty"`
	EvalCount          int   `json:"eval_count,omitempty"`
	EvalDuration       int64 `json:"eval_duration,omitempty"`
}

// ChatResponse is a response (or a stream's line) of POST /api/chat.
type ChatResponse struct {
	Model      string  `json:"model"`
	CreatedAt  string  `json:"created_at"`
	Message    Message `json:"message"`
	DoneReason string  `json:"done_reason,omitempty"`
	Done       bool    `json:"done"`
	Metrics
}

// GenerateResponse is a response (or a stream's line) of POST /api/generate.
type GenerateResponse struct {
	Model      string `json:"model"`
	CreatedAt  string `json:"created_at"`
	Response   string `json:"response"`
	Thinking   string `json:"thinking,omitempty"`
	DoneReason string `json:"done_reason,omitempty"`
	Done       bool   `json:"done"`
	Metrics
}

// Details describe a model.
type Details struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"`
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

// ListModel is one entry of GET /api/tags.
type ListModel struct {
	Name       string  `json:"name"`
	Model      string  `json:"model"`
	ModifiedAt string  `json:"modified_at"`
	Size       int64   `json:"size"`
	Digest     string  `json:"digest"`
	Details    Details `json:"details"`
}

// ListResponse is GET /api/tags.
type ListResponse struct {
	Models []ListModel `json:"models"`
}

// ProcessModel is one entry of GET /api/ps.
type ProcessModel struct {
	Name          string  `json:"name"`
	Model         string  `json:"model"`
	Size          int64   `json:"size"`
	Digest        string  `json:"digest"`
	Details       Details `json:"details"`
	ExpiresAt     string  `json:"expires_at"`
	SizeVRAM      int64   `json:"size_vram"`
	ContextLength int     `json:"context_length"`
}

// ProcessResponse is GET /api/ps.
type ProcessResponse struct {
	Models []ProcessModel `json:"models"`
}

// ShowResponse is POST /api/show.
type ShowResponse struct {
	License      string         `json:"license"`
	Modelfile    string         `json:"modelfile"`
	Parameters   string         `json:"parameters"`
	Template     string         `json:"template"`
	Details      Details        `json:"details"`
	ModelInfo    map[string]any `json:"model_info"`
	Capabilities []string       `json:"capabilities"`
	ModifiedAt   string         `json:"modified_at"`
}

// EmbedResponse is POST /api/embed.
type EmbedResponse struct {
	Model           string      `json:"model"`
	Embeddings      [][]float32 `json:"embeddings"`
	TotalDuration   int64       `json:"total_duration,omitempty"`
	LoadDuration    int64       `json:"load_duration,omitempty"`
	PromptEvalCount int         `json:"prompt_eval_count,omitempty"`
}

// EmbeddingResponse is POST /api/embeddings.
type EmbeddingResponse struct {
	Embedding []float32 `json:"embedding"`
}

// errorBody is Ollama's error shape.
type errorBody struct {
	Error string `json:"error"`
}
