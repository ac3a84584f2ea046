package ollama

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/generation"
)

// show serves POST /api/show: what the server knows of the model: its chat template (a
// conversation rendered with Ollama's placeholders), its parameters as loaded, its
// context length and embedding width, and what it can do.
func (h *Handler) show(w http.ResponseWriter, r *http.Request) {
	body, e := h.g.ReadBody(w, r)
	var m map[string]json.RawMessage
	if e == nil {
		m, e = members(body, generation.BudgetFor(r.Context()))
	}
	var model string
	if e == nil {
		if e = decode(m, "model", "model", &model, "a string"); e == nil && model == "" {
			e = decode(m, "name", "name", &model, "a string")
		}
	}
	switch {
	case e != nil:
	case h.g.ModelID() == "":
		e = generation.NoModel()
	case !h.matches(model):
		e = generation.NotFound("model %q not found: this server serves %s (GET /api/tags lists it)", model, h.name())
	}
	if e != nil {
		h.fail(w, e)
		return
	}
	f := h.file()
	resp := ShowResponse{Details: h.details(), Template: h.templateText(r.Context()), ModifiedAt: f.modified.UTC().Format(time.RFC3339Nano),
		Capabilities: h.capabilities(), ModelInfo: map[string]any{"general.architecture": "rkllm", "general.basename": h.g.ModelID()}}
	var params []string
	if lm, ok := h.g.Backend().LoadedModel(); ok {
		p := lm.Param
		resp.ModelInfo["rkllm.context_length"] = p.MaxContextLen
		params = append(params, parameter("num_ctx", p.MaxContextLen))
		if p.MaxNewTokens > 0 {
			params = append(params, parameter("num_predict", p.MaxNewTokens))
		}
		params = append(params, parameter("temperature", p.Temperature), parameter("top_k", p.TopK), parameter("top_p", p.TopP),
			parameter("repeat_penalty", p.RepeatPenalty), parameter("frequency_penalty", p.FrequencyPenalty),
			parameter("presence_penalty", p.PresencePenalty), parameter("mirostat", p.Mirostat))
		if lm.EmbedWidth > 0 {
			resp.ModelInfo["rkllm.embedding_length"] = lm.EmbedWidth
		}
	}
	if eor := h.g.Template().EndOfReply(); eor != "" {
		params = append(params, parameter("stop", fmt.Sprintf("%q", eor)))
	}
	resp.Parameters = strings.Join(params, "\n")
	resp.Modelfile = fmt.Sprintf("# This model is managed by the RKLLMModel resource (rkllm-server %s).\nFROM %s\n", h.name(), h.g.ModelPath())
	for _, p := range params {
		resp.Modelfile += "PARAMETER " + p + "\n"
	}
	h.g.BytesOut(writeJSON(w, http.StatusOK, resp))
}

func parameter(name string, v any) string { return fmt.Sprintf("%-30s %v", name, v) }

// capabilities are what the model can do here: complete, call tools, embed, and think
// with a thinking chat template.
func (h *Handler) capabilities() []string {
	c := []string{"completion", "tools", "embedding"}
	if turns, ok := h.g.Template().(*chattemplate.Turns); ok && turns.Thinking != "" {
		c = append(c, "thinking")
	}
	return c
}

// templateText is the chat template as a conversation with Ollama's placeholders
// rendered by it, or its name when it cannot render one.
func (h *Handler) templateText(ctx context.Context) string {
	tmpl := h.g.Template()
	out, err := tmpl.Render(ctx, &chattemplate.Conversation{Messages: []chattemplate.Message{
		{Role: chattemplate.RoleSystem, Content: "{{ .System }}"}, {Role: chattemplate.RoleUser, Content: "{{ .Prompt }}"}}})
	if err != nil {
		return tmpl.Name()
	}
	return out
}
