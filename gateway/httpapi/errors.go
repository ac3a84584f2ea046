package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/rkllm-operator/rkllm-operator/gateway/proxy"
)

// apiError is an error answered to a client: in OpenAI's shape ({"error": {message,
// type, param, code}}) on /v1/, in Ollama's ({"error": message}) on /api/, and as a
// server-sent event on a stream the gateway has already opened.
type apiError struct {
	status  int
	typ     string
	code    string
	param   string
	message string
	// retryAfter, when set, is sent as the Retry-After header.
	retryAfter time.Duration
	// reason labels the refusal in rkllm_gateway_rejected_total ("" when the request
	// is not counted as refused).
	reason string
}

func (e *apiError) Error() string { return e.message }

// Error types, as OpenAI names them.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typePermission     = "permission_error"
	typeRateLimit      = "rate_limit_error"
	typeServer         = "server_error"
)

func errorf(status int, typ, code, reason, format string, args ...any) *apiError {
	return &apiError{status: status, typ: typ, code: code, reason: reason, message: fmt.Sprintf(format, args...)}
}

func (e *apiError) withParam(p string) *apiError { e.param = p; return e }

func (e *apiError) after(d time.Duration) *apiError { e.retryAfter = d; return e }

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// openAIBody is the error in OpenAI's shape.
func (e *apiError) openAIBody() []byte {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": e.message, "type": e.typ, "param": nullable(e.param), "code": nullable(e.code),
	}})
	return b
}

// write answers e in the shape of the API; with committed (an event stream already
// open) as a last event.
func (e *apiError) write(w http.ResponseWriter, ollama, committed bool) {
	if committed {
		// An event of JSON on a text/event-stream, not HTML.
		_, _ = w.Write([]byte(proxy.ErrorEvent(e.status, e.openAIBody()))) //nolint:gosec // G705: JSON in an event stream
		return
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(e.retryAfter.Round(time.Second).Seconds())))
	}
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="rkllm-gateway"`)
	}
	body := e.openAIBody()
	if ollama {
		body, _ = json.Marshal(map[string]string{"error": e.message})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.status)
	_, _ = w.Write(append(body, '\n')) //nolint:gosec // G705: JSON, sent as application/json with nosniff
}
