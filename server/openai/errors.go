package openai

import "github.com/rkllm-operator/rkllm-operator/server/generation"

// Error is an API error, written in OpenAI's shape: {"error": {message, type, param,
// code}}.
type Error = generation.Error

var (
	strp        = generation.Strp
	invalid     = generation.Invalid
	unsupported = generation.Unsupported
)

func modelNotFound(model, served string) *Error {
	e := generation.NotFound("The model `%s` does not exist: this server serves `%s` (GET /v1/models lists it).", model, served)
	e.Param, e.Code = strp("model"), strp("model_not_found")
	return e
}
