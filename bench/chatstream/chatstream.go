// Package chatstream is the benchmarks' client of a streamed /v1/chat/completions: it
// sends one chat and times its reply as a user sees it.
package chatstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Reply is a streamed chat completion as it reached the client.
type Reply struct {
	// TTFT is the time from sending the request to the first content.
	TTFT time.Duration
	Text string
	// Usage is the usage chunk's, when the request asked for one
	// (stream_options.include_usage); zero otherwise.
	Usage Usage
}

// Usage is the usage the server reported.
type Usage struct {
	PromptTokens, CachedTokens, CompletionTokens int
}

// Post sends body, a streamed chat completion request, to base's
// /v1/chat/completions and reads the reply to its end.
func Post(ctx context.Context, base string, body []byte) (Reply, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return Reply{}, err
	}
	begin := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Reply{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		var msg bytes.Buffer
		_, _ = msg.ReadFrom(resp.Body)
		return Reply{}, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg.Bytes()))
	}
	var r Reply
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens        int `json:"prompt_tokens"`
				CompletionTokens    int `json:"completion_tokens"`
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return Reply{}, fmt.Errorf("event %q: %w", data, err)
		}
		if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			if r.TTFT == 0 {
				r.TTFT = time.Since(begin)
			}
			text.WriteString(chunk.Choices[0].Delta.Content)
		}
		if u := chunk.Usage; u != nil {
			r.Usage = Usage{PromptTokens: u.PromptTokens, CachedTokens: u.PromptTokensDetails.CachedTokens, CompletionTokens: u.CompletionTokens}
		}
	}
	r.Text = text.String()
	return r, sc.Err()
}
