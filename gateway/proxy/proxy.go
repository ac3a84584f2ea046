// Package proxy forwards one request to one replica and streams the reply back as it
// comes: each chunk the server writes reaches the client without buffering, and a
// client that leaves cancels the request to the server. It is net/http/httputil's
// ReverseProxy with the gateway's rules: the client's credentials are replaced by the
// server's own API key, and a reply to a stream the gateway has already opened (to keep
// the client waiting through an activation) is written as server-sent events, errors
// included.
package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// maxErrorBody bounds how much of an error reply is read to re-encode it as an event.
const maxErrorBody = 64 << 10

// Target is the replica a request goes to.
type Target struct {
	// Address is host:port of the server's HTTP listener.
	Address string
	// APIKey is the server's own key ("" when it has none): it replaces the client's
	// Authorization, which is never passed on.
	APIKey string
}

// Result is what became of a forwarded request.
type Result struct {
	// Status is the replica's HTTP status (0 when it gave none).
	Status int
	// FirstByte is when the first byte of the reply reached the client (zero: none).
	FirstByte time.Time
	// Wrote is true when anything was written to the client.
	Wrote bool
	// Err is why the replica failed the request (nil when it answered).
	Err error
	// Retryable is true when the replica was never reached (the connection was
	// refused), so another replica may take the request.
	Retryable bool
}

// Proxy forwards requests to replicas.
type Proxy struct {
	// Transport reaches the replicas.
	Transport http.RoundTripper
	Clock     clock.PassiveClock
}

// NewTransport is the transport to replicas: bounded connection attempts, kept-alive
// connections, no response header timeout (a reply that is not streamed comes only
// when the model has finished; the server's request timeout bounds it).
func NewTransport(dialTimeout time.Duration, maxIdlePerHost int) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: maxIdlePerHost,
		IdleConnTimeout:     90 * time.Second,
	}
}

// Forward sends r, whose body has already been read into body, to t and streams the
// reply to w. With committed, w already holds an open server-sent event stream (status
// and headers sent): the reply's status and headers are dropped, its events passed on,
// and an error reply becomes a `data: {"error": ...}` event, which OpenAI's clients
// raise as an error. A reply broken off mid-way aborts the client's connection
// (http.ErrAbortHandler), so the client sees it was cut.
func (p *Proxy) Forward(w http.ResponseWriter, r *http.Request, body []byte, t Target, committed bool) Result {
	res := &Result{}
	rw := &recorder{ResponseWriter: w, clock: p.Clock, res: res, committed: committed}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = t.Address
			pr.Out.Host = t.Address
			pr.Out.Header.Del("Authorization")
			if t.APIKey != "" {
				pr.Out.Header.Set("Authorization", "Bearer "+t.APIKey)
			}
			pr.SetXForwarded()
			pr.Out.Body = io.NopCloser(bytes.NewReader(body))
			pr.Out.ContentLength = int64(len(body))
			pr.Out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		},
		Transport:     p.Transport,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			res.Status = resp.StatusCode
			if committed && resp.StatusCode != http.StatusOK {
				resp.Body = eventBody(resp)
			}
			return nil
		},
	}
	rp.ErrorHandler = func(_ http.ResponseWriter, _ *http.Request, err error) {
		res.Err = err
		res.Retryable = !rw.wrote() && notReached(err)
	}
	rp.ServeHTTP(rw, r)
	return *res
}

// notReached reports whether the request never reached the replica: the connection
// could not be made.
func notReached(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// eventBody reads an error reply and returns it as one server-sent event.
func eventBody(resp *http.Response) io.ReadCloser {
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return io.NopCloser(strings.NewReader(ErrorEvent(resp.StatusCode, data)))
}

// ErrorEvent is a server-sent event carrying an error reply: its JSON on one line, or,
// when the reply is not JSON, OpenAI's error shape around its text.
func ErrorEvent(status int, body []byte) string {
	var buf bytes.Buffer
	if json.Valid(body) && json.Compact(&buf, body) == nil {
		return "data: " + buf.String() + "\n\n"
	}
	e := map[string]any{"error": map[string]any{
		"message": fmt.Sprintf("the model's server answered HTTP %d: %s", status, strings.TrimSpace(string(body))),
		"type":    "server_error", "param": nil, "code": nil,
	}}
	b, _ := json.Marshal(e)
	return "data: " + string(b) + "\n\n"
}

// recorder notes what was written to the client; with committed, it writes only the
// body (status and headers went out with the stream).
type recorder struct {
	http.ResponseWriter
	clock     clock.PassiveClock
	committed bool

	mu     sync.Mutex
	res    *Result
	header http.Header
}

func (rw *recorder) Header() http.Header {
	if rw.committed {
		if rw.header == nil {
			rw.header = http.Header{}
		}
		return rw.header
	}
	return rw.ResponseWriter.Header()
}

func (rw *recorder) WriteHeader(code int) {
	rw.mark(false)
	if !rw.committed {
		rw.ResponseWriter.WriteHeader(code)
	}
}

func (rw *recorder) Write(b []byte) (int, error) {
	rw.mark(len(b) > 0)
	return rw.ResponseWriter.Write(b)
}

// Flush passes flushes on, so every chunk goes out as it comes.
func (rw *recorder) Flush() {
	if f, ok := rw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

func (rw *recorder) mark(body bool) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.res.Wrote = true
	if body && rw.res.FirstByte.IsZero() {
		rw.res.FirstByte = rw.clock.Now()
	}
}

func (rw *recorder) wrote() bool {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.res.Wrote
}
