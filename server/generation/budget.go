package generation

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
	"github.com/rkllm-operator/rkllm-operator/server/inflight"
)

// Budget charges a request's account of the budget of bytes in flight
// (--max-inflight-bytes, server/inflight) before an allocation; nil charges nothing.
type Budget func(n int) *Error

// Pay charges n bytes; an *Error (429) says they do not fit.
func (b Budget) Pay(n int) *Error {
	if b == nil || n <= 0 {
		return nil
	}
	return b(n)
}

// BudgetFor is the Budget of the request's account (in ctx).
func BudgetFor(ctx context.Context) Budget {
	acct := inflight.FromContext(ctx)
	if acct == nil {
		return nil
	}
	return func(n int) *Error {
		if err := acct.Charge(n); err != nil {
			return OverBudget(err)
		}
		return nil
	}
}

// OverBudget answers a request that does not fit the budget of bytes in flight.
func OverBudget(err error) *Error {
	return &Error{Status: http.StatusTooManyRequests, Type: TypeRateLimit, Code: Strp("rate_limit_exceeded"), RetryAfter: strconv.Itoa(inflight.RetryAfterSeconds),
		Message: busy(err) + "."}
}

// busy says the server is busy, for what err says (which begins "busy: " itself).
func busy(err error) string {
	return "The server is busy: " + strings.TrimPrefix(err.Error(), "busy: ")
}

// Costs charged before decoding, beyond the bytes of the text itself.
const (
	// MemberCost is a member of a map of raw members.
	MemberCost = 64
	// ElementCost is an element decoded by encoding/json into a map or struct (rare
	// arrays: content parts, tool calls, tools), its garbage included.
	ElementCost = 512
	// renderCost is what a rendered turn adds to its text (role markers, separators).
	renderCost = 64
)

// holdForRun sets what the request holds of the budget of bytes in flight while it
// waits and runs: its prompt and the prompt's copy in the frame to the worker. The
// body and the decoded messages, charged before, are garbage once the prompt exists.
func holdForRun(ctx context.Context, spec *Spec) *Error {
	acct := inflight.FromContext(ctx)
	keep := 2 * len(spec.Prompt)
	if spec.Tools != nil {
		keep += 2 * (len(spec.Tools.Tools) + len(spec.Tools.SystemPrompt))
	}
	switch held := int(acct.Held()); {
	case held < keep:
		if err := acct.Charge(keep - held); err != nil {
			return OverBudget(err)
		}
	default:
		acct.Release(held - keep)
	}
	return nil
}

// NoNUL refuses a string that would reach the runtime with a NUL character: the
// runtime takes C strings, which end there.
func NoNUL(param, s string) *Error {
	if i := strings.IndexByte(s, 0); i >= 0 {
		return Invalid(param, "invalid_value", "Invalid '%s': it contains a NUL character (\\u0000) at byte %d, where the model's prompt (a C string) would end. Remove it.", param, i)
	}
	return nil
}

// MessageNoNUL refuses a message whose text members hold a NUL character, naming the
// member (where is the message's path, such as messages[2]): a template may render
// any of them into the prompt.
func MessageNoNUL(msg *chattemplate.Message, where string) *Error {
	for _, f := range []struct{ param, v string }{{".content", msg.Content}, {".name", msg.Name}, {".tool_call_id", msg.ToolCallID}} {
		if e := NoNUL(where+f.param, f.v); e != nil {
			return e
		}
	}
	return ToolCallsNoNUL(msg.ToolCalls, where)
}

// ToolCallsNoNUL refuses a message's past tool calls whose name or arguments hold a
// NUL character.
func ToolCallsNoNUL(calls []chattemplate.ToolCall, where string) *Error {
	for j, tc := range calls {
		if e := NoNUL(fmt.Sprintf("%s.tool_calls[%d].function", where, j), tc.Name+tc.Arguments); e != nil {
			return e
		}
	}
	return nil
}
