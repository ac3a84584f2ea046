package chattemplate

// The presets follow each family's Hugging Face chat template for plain conversations
// and tool results (docs/openai.md lists them). The beginning-of-sequence token is
// left out, as in Rockchip's own chat templates for RKLLM: the runtime's tokenizer
// adds it. Past tool calls are written the way RKLLM's function calling emits them
// (FormatToolCall).

const (
	imStart = "<|im_start|>"
	imEnd   = "<|im_end|>"
)

// chatML is the ChatML layout (Qwen 2, 2.5, 3, MiniCPM 3/4, InternLM 2/3).
func chatML(name, defaultSystem string) *Turns {
	return &Turns{
		TemplateName:  name,
		SystemPrefix:  imStart + "system\n",
		SystemSuffix:  imEnd + "\n",
		DefaultSystem: defaultSystem,
		UserPrefix:    imStart + "user\n", UserSuffix: imEnd + "\n",
		AssistantPrefix: imStart + "assistant\n", AssistantSuffix: imEnd + "\n",
		ToolGroupPrefix: imStart + "user", ToolGroupSuffix: imEnd + "\n",
		ToolPrefix: "\n<tool_response>\n", ToolSuffix: "\n</tool_response>",
		EOS: imEnd,
	}
}

func withThinking(t *Turns, mode string, off bool) *Turns {
	t.Thinking, t.ThinkingOff = mode, off
	return t
}

var presets = map[string]*Turns{
	"chatml":            chatML("chatml", ""),
	"qwen2":             chatML("qwen2", "You are a helpful assistant."),
	"qwen2.5":           chatML("qwen2.5", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
	"qwen3":             withThinking(chatML("qwen3", ""), thinkQwen3, false),
	"qwen3-no-thinking": withThinking(chatML("qwen3-no-thinking", ""), thinkQwen3, true),
	"minicpm":           chatML("minicpm", ""),
	"internlm2":         chatML("internlm2", ""),
	"llama3": {
		TemplateName: "llama3",
		SystemPrefix: "<|start_header_id|>system<|end_header_id|>\n\n", SystemSuffix: "<|eot_id|>",
		UserPrefix: "<|start_header_id|>user<|end_header_id|>\n\n", UserSuffix: "<|eot_id|>",
		AssistantPrefix: "<|start_header_id|>assistant<|end_header_id|>\n\n", AssistantSuffix: "<|eot_id|>",
		ToolPrefix: "<|start_header_id|>ipython<|end_header_id|>\n\n", ToolSuffix: "<|eot_id|>",
		EOS: "<|eot_id|>", TrimContent: true,
	},
	"deepseek-r1": {
		TemplateName: "deepseek-r1",
		UserPrefix:   "<｜User｜>", AssistantPrefix: "<｜Assistant｜>", AssistantSuffix: "<｜end▁of▁sentence｜>",
		EOS: "<｜end▁of▁sentence｜>", Thinking: thinkDeepSeek,
	},
	"gemma": {
		TemplateName: "gemma", SystemInUser: true,
		UserPrefix: "<start_of_turn>user\n", UserSuffix: "<end_of_turn>\n",
		AssistantPrefix: "<start_of_turn>model\n", AssistantSuffix: "<end_of_turn>\n",
		EOS: "<end_of_turn>", TrimContent: true,
	},
	"phi3": {
		TemplateName: "phi3",
		SystemPrefix: "<|system|>\n", SystemSuffix: "<|end|>\n",
		UserPrefix: "<|user|>\n", UserSuffix: "<|end|>\n",
		AssistantPrefix: "<|assistant|>\n", AssistantSuffix: "<|end|>\n",
		EOS: "<|end|>",
	},
}
