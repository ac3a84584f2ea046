package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/connlimit"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
	"github.com/rkllm-operator/rkllm-operator/server/supervisor"
)

const waitTimeout = 10 * time.Second

type health struct{ st supervisor.Status }

func (h *health) Status() supervisor.Status { return h.st }

type fixture struct {
	base     string
	d        *jsonrpc.Dispatcher
	h        *health
	srv      *Server
	canceled chan struct{}
	started  chan struct{}
	flooded  chan error
	release  chan struct{}
	written  *writes
}

// writes reports each plain (not streamed) response's bytes written.
type writes struct{ out chan int }

func (w *writes) BytesIn(string, int) {}
func (w *writes) BytesOut(_ string, n int) {
	select {
	case w.out <- n:
	default:
	}
}
func (w *writes) ClientCutOff(string) {}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := &fixture{d: jsonrpc.NewDispatcher(logr.Discard(), nil), h: &health{}, canceled: make(chan struct{}, 1), started: make(chan struct{}, 1),
		flooded: make(chan error, 2), release: make(chan struct{}), written: &writes{out: make(chan int, 16)}}
	// flood streams 1 kB notifications until Notify fails, then waits to be cancelled.
	f.d.Register("flood", jsonrpc.HandlerFunc(func(ctx context.Context, c *jsonrpc.Call) (any, error) {
		pad := strings.Repeat("z", 1000)
		for {
			if err := c.Notify("pad", map[string]string{"pad": pad}); err != nil {
				f.flooded <- err
				break
			}
		}
		select {
		case <-ctx.Done():
			f.flooded <- ctx.Err()
		case <-time.After(waitTimeout):
			f.flooded <- errors.New("the request was not cancelled")
		}
		return nil, ctx.Err()
	}))
	// big answers bigAnswer bytes.
	f.d.Register("big", jsonrpc.HandlerFunc(func(context.Context, *jsonrpc.Call) (any, error) {
		return strings.Repeat("b", bigAnswer), nil
	}))
	// slowstream sends a notification, waits for release, then answers.
	f.d.Register("slowstream", jsonrpc.HandlerFunc(func(ctx context.Context, c *jsonrpc.Call) (any, error) {
		if err := c.Notify("tick", nil); err != nil {
			return nil, err
		}
		select {
		case <-f.release:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}))
	f.d.Register("echo", jsonrpc.HandlerFunc(func(_ context.Context, c *jsonrpc.Call) (any, error) {
		return map[string]any{"admin": c.Peer.Admin, "persistent": c.Peer.Persistent, "can_notify": c.CanNotify()}, nil
	}))
	f.d.Register("owner", jsonrpc.HandlerFunc(func(_ context.Context, c *jsonrpc.Call) (any, error) {
		return c.Peer.ID, nil
	}))
	f.d.Register("stream", jsonrpc.HandlerFunc(func(_ context.Context, c *jsonrpc.Call) (any, error) {
		for i := range 3 {
			if err := c.Notify("tick", map[string]int{"i": i}); err != nil {
				return nil, err
			}
		}
		return "streamed", nil
	}))
	f.d.Register("busy", jsonrpc.HandlerFunc(func(context.Context, *jsonrpc.Call) (any, error) {
		return nil, jsonrpc.ErrBusy.Withf("busy: queue full")
	}))
	f.d.Register("hold", jsonrpc.HandlerFunc(func(ctx context.Context, _ *jsonrpc.Call) (any, error) {
		f.started <- struct{}{}
		<-ctx.Done()
		f.canceled <- struct{}{}
		return nil, jsonrpc.ErrAborted
	}))
	opts.Addr = "127.0.0.1:0"
	opts.Health = f.h
	if opts.Observer == nil {
		opts.Observer = f.written
	}
	opts.Log = logr.Discard()
	f.srv = New(f.d, opts)
	ln, err := f.srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(func() { _ = f.srv.Close() })
	f.base = "http://" + ln.Addr().String()
	return f
}

func post(t *testing.T, url, body string, header ...string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestRPC(t *testing.T) {
	f := newFixture(t, Options{MaxRequestBytes: 1000})
	tests := []struct {
		name, body  string
		header      []string
		status      int
		contentType string
		want        string
	}{
		{"single", `{"jsonrpc":"2.0","id":1,"method":"echo"}`, nil, 200, ContentJSON,
			`{"jsonrpc":"2.0","id":1,"result":{"admin":false,"can_notify":true,"persistent":false}}` + "\n"},
		{"batch cannot stream", `[{"jsonrpc":"2.0","id":1,"method":"echo"}]`, nil, 200, ContentJSON,
			`[{"jsonrpc":"2.0","id":1,"result":{"admin":false,"can_notify":false,"persistent":false}}]` + "\n"},
		{"notification", `{"jsonrpc":"2.0","method":"echo"}`, nil, 204, "", ``},
		{"ndjson stream", `{"jsonrpc":"2.0","id":7,"method":"stream"}`, nil, 200, ContentNDJSON,
			`{"jsonrpc":"2.0","method":"tick","params":{"i":0}}` + "\n" + `{"jsonrpc":"2.0","method":"tick","params":{"i":1}}` + "\n" +
				`{"jsonrpc":"2.0","method":"tick","params":{"i":2}}` + "\n" + `{"jsonrpc":"2.0","id":7,"result":"streamed"}` + "\n"},
		{"sse stream", `{"jsonrpc":"2.0","id":7,"method":"stream"}`, []string{"Accept", "text/event-stream"}, 200, ContentSSE,
			`data: {"jsonrpc":"2.0","method":"tick","params":{"i":0}}` + "\n\n" + `data: {"jsonrpc":"2.0","method":"tick","params":{"i":1}}` + "\n\n" +
				`data: {"jsonrpc":"2.0","method":"tick","params":{"i":2}}` + "\n\n" + `data: {"jsonrpc":"2.0","id":7,"result":"streamed"}` + "\n\n"},
		{"busy is 429", `{"jsonrpc":"2.0","id":1,"method":"busy"}`, nil, 429, ContentJSON,
			`{"jsonrpc":"2.0","id":1,"error":{"code":-32002,"message":"busy: queue full"}}` + "\n"},
		{"too large", `{"jsonrpc":"2.0","id":1,"method":"echo","params":{"x":"` + strings.Repeat("a", 2000) + `"}}`, nil, 413, ContentJSON,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32008,"message":"request too large: a request may have at most 1000 bytes (--max-request-bytes)","data":{"limit":"max-request-bytes","max":1000}}}` + "\n"},
		{"parse error", `{`, nil, 200, ContentJSON,
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error: the message is not valid JSON"}}` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, f.base+"/rpc", tt.body, tt.header...)
			if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != tt.contentType || body != tt.want {
				t.Errorf("got %d %q\n%s\nwant %d %q\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.status, tt.contentType, tt.want)
			}
		})
	}
	resp, _ := get(t, f.base+"/rpc")
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET /rpc: %d", resp.StatusCode)
	}
}

func TestAPIKey(t *testing.T) {
	f := newFixture(t, Options{APIKeys: []string{"s3cret", "other"}, Admin: true})
	resp, body := post(t, f.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo"}`)
	if resp.StatusCode != 401 || !strings.Contains(body, "-32007") || resp.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("without a key: %d %s", resp.StatusCode, body)
	}
	resp, _ = post(t, f.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo"}`, "Authorization", "Bearer wrong")
	if resp.StatusCode != 401 {
		t.Errorf("wrong key: %d", resp.StatusCode)
	}
	resp, body = post(t, f.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo"}`, "Authorization", "Bearer s3cret")
	if resp.StatusCode != 200 || !strings.Contains(body, `"admin":true`) {
		t.Errorf("right key: %d %s", resp.StatusCode, body)
	}
	// Each key owns the runs its requests start, under a name that does not show it.
	owners := map[string]bool{}
	for _, key := range []string{"s3cret", "other", "s3cret"} {
		_, body := post(t, f.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"owner"}`, "Authorization", "Bearer "+key)
		var r struct{ Result string }
		if err := json.Unmarshal([]byte(body), &r); err != nil || r.Result == "" || strings.Contains(r.Result, key) {
			t.Fatalf("owner of a request with key %q: %s", key, body)
		}
		owners[r.Result] = true
	}
	if len(owners) != 2 {
		t.Errorf("owners of requests with two keys: %v, want one a key", owners)
	}
	// Probes and metrics need no key.
	if resp, _ := get(t, f.base+"/livez"); resp.StatusCode != 200 {
		t.Errorf("livez with a key configured: %d", resp.StatusCode)
	}
}

func TestHealth(t *testing.T) {
	f := newFixture(t, Options{})
	f.h.st = supervisor.Status{WorkerUp: true, Reason: "model loading"}
	if resp, body := get(t, f.base+"/readyz"); resp.StatusCode != 503 || !strings.Contains(body, `"reason":"model loading"`) {
		t.Errorf("readyz while loading: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, f.base+"/healthz"); resp.StatusCode != 200 {
		t.Errorf("healthz with the worker up: %d", resp.StatusCode)
	}
	f.h.st = supervisor.Status{WorkerUp: true, Ready: true, ModelLoaded: true}
	if resp, body := get(t, f.base+"/readyz"); resp.StatusCode != 200 || !strings.Contains(body, `"ready":true`) {
		t.Errorf("readyz when ready: %d %s", resp.StatusCode, body)
	}
	f.d.Drain()
	if resp, body := get(t, f.base+"/readyz"); resp.StatusCode != 503 || !strings.Contains(body, `"draining":true`) {
		t.Errorf("readyz while draining: %d %s", resp.StatusCode, body)
	}
	if resp, body := post(t, f.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo"}`); resp.StatusCode != 503 || !strings.Contains(body, "-32009") {
		t.Errorf("rpc while draining: %d %s", resp.StatusCode, body)
	}
	if resp, _ := get(t, f.base+"/livez"); resp.StatusCode != 200 {
		t.Errorf("livez while draining: %d", resp.StatusCode)
	}
	f.h.st = supervisor.Status{}
	if resp, _ := get(t, f.base+"/healthz"); resp.StatusCode != 503 {
		t.Errorf("healthz without a worker: %d", resp.StatusCode)
	}
}

func TestClientDisconnectCancels(t *testing.T) {
	f := newFixture(t, Options{})
	var d net.Dialer
	nc, err := d.DialContext(context.Background(), "tcp", strings.TrimPrefix(f.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"jsonrpc":"2.0","id":1,"method":"hold"}`
	_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	select {
	case <-f.started:
	case <-time.After(waitTimeout):
		t.Fatal("request not started")
	}
	_ = nc.Close()
	select {
	case <-f.canceled:
	case <-time.After(waitTimeout):
		t.Fatal("the request's context was not cancelled when the client left")
	}
}

func TestConnectionLimit(t *testing.T) {
	f := newFixture(t, Options{Limiter: connlimit.New(1, 0, nil)})
	var d net.Dialer
	held, err := d.DialContext(context.Background(), "tcp", strings.TrimPrefix(f.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Close() }()
	// Make sure the server has accepted the first connection before the second one.
	_, _ = io.WriteString(held, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(bufio.NewReader(held), nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first connection: %v", err)
	}
	resp, body := post(t, f.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo"}`)
	var r jsonrpc.Response
	if resp.StatusCode != 503 || json.Unmarshal([]byte(body), &r) != nil || r.Error == nil || r.Error.Code != -32002 {
		t.Errorf("over the limit: %d %s", resp.StatusCode, body)
	}
}

// TestStreamingClientThatStopsReadingIsCutOff: a stream the client does not read fills
// its bounded buffer without blocking the producer; then the request is cancelled.
func TestStreamingClientThatStopsReadingIsCutOff(t *testing.T) {
	f := newFixture(t, Options{OutputBufferBytes: 64 << 10})
	nc := rawConn(t, f)
	body := `{"jsonrpc":"2.0","id":1,"method":"flood"}`
	_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	if err := await(t, "Notify to fail", f.flooded); !errors.Is(err, outbuf.ErrOverflow) && !errors.Is(err, outbuf.ErrClosed) {
		t.Fatalf("Notify to a client that does not read: %v, want an overflow", err)
	}
	if err := await(t, "the request's cancellation", f.flooded); !errors.Is(err, context.Canceled) {
		t.Fatalf("the flooding request: %v, want cancelled", err)
	}
	// The stream was cut mid-way: the connection ends, rather than serve another
	// request after a broken body.
	_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.Copy(io.Discard, nc); err != nil {
		t.Errorf("the connection of a stream cut off: %v, want it closed by the server", err)
	}
}

// TestBodyReadTimeout: a client that sends its headers and then stalls in its body is
// answered and disconnected after the body timeout; a stream lasting longer than that
// timeout is not cut by it.
func TestBodyReadTimeout(t *testing.T) {
	f := newFixture(t, Options{BodyTimeout: 200 * time.Millisecond})
	stream := rawConn(t, f)
	body := `{"jsonrpc":"2.0","id":1,"method":"slowstream"}`
	_, _ = io.WriteString(stream, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	resp, err := http.ReadResponse(bufio.NewReader(stream), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream: %v", err)
	}
	sr := bufio.NewReader(resp.Body)
	if line, err := sr.ReadString('\n'); err != nil || !strings.Contains(line, "tick") {
		t.Fatalf("first line of the stream %q: %v", line, err)
	}
	slow := rawConn(t, f)
	_, _ = io.WriteString(slow, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
	_ = slow.SetReadDeadline(time.Now().Add(waitTimeout))
	resp, err = http.ReadResponse(bufio.NewReader(slow), nil)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("stalled body: %v %v", resp, err)
	}
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), "-32700") || !strings.Contains(string(b), "--body-read-timeout") {
		t.Errorf("stalled body answered %s", b)
	}
	// The body timeout has passed for the stream's request too: it goes on.
	close(f.release)
	rest, err := sr.ReadString('\n')
	if !strings.Contains(rest, `"result":"done"`) {
		t.Errorf("rest of the stream %q: %v", rest, err)
	}
}

// TestReadHeaderTimeout: a client that does not finish its headers is disconnected.
func TestReadHeaderTimeout(t *testing.T) {
	f := newFixture(t, Options{ReadHeaderTimeout: 100 * time.Millisecond})
	nc := rawConn(t, f)
	_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\n")
	_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := io.ReadAll(nc); err != nil {
		t.Fatalf("half a header, then silence: %v, want the connection closed", err)
	}
}

// TestBodyLimitOnEveryPath: handlers mounted next to /rpc (the OpenAI API) get bodies
// bounded by MaxRequestBytes too.
func TestBodyLimitOnEveryPath(t *testing.T) {
	f := newFixture(t, Options{MaxRequestBytes: 100})
	f.srv.Handle("/v1/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	if resp, _ := post(t, f.base+"/v1/chat/completions", strings.Repeat("x", 50)); resp.StatusCode != 200 {
		t.Errorf("small body: %d", resp.StatusCode)
	}
	if resp, _ := post(t, f.base+"/v1/chat/completions", strings.Repeat("x", 500)); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("large body: %d", resp.StatusCode)
	}
}

func rawConn(t *testing.T, f *fixture) net.Conn {
	t.Helper()
	var d net.Dialer
	nc, err := d.DialContext(context.Background(), "tcp", strings.TrimPrefix(f.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return nc
}

func await[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		var zero T
		return zero
	}
}

// bigAnswer is more than a loopback TCP connection buffers (Linux's send buffer grows to
// 4 MiB by default; the test's client reads into 4 KiB), and small enough to encode
// quickly under -race on a loaded machine.
const bigAnswer = 8 << 20

// TestPlainAnswerWriteTimeout: a client that does not read a plain (not streamed)
// answer does not hold the handler: the write gives up after the write timeout.
func TestPlainAnswerWriteTimeout(t *testing.T) {
	f := newFixture(t, Options{WriteTimeout: 200 * time.Millisecond})
	nc := rawConn(t, f)
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	body := `{"jsonrpc":"2.0","id":1,"method":"big"}`
	_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	if n := await(t, "the write to give up", f.written.out); n >= bigAnswer {
		t.Errorf("%d bytes written to a client that reads nothing", n)
	}
}

// TestContentLengthOverTheLimit: a request whose head declares a body over
// MaxRequestBytes is answered 413 at once, on /rpc and beside it, without the body
// (here never sent) and without waiting for BodyTimeout (an hour here); the
// connection is closed after the answer.
func TestContentLengthOverTheLimit(t *testing.T) {
	f := newFixture(t, Options{MaxRequestBytes: 100, BodyTimeout: time.Hour})
	f.srv.Handle("/v1/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	for _, path := range []string{"/rpc", "/v1/chat/completions"} {
		nc := rawConn(t, f)
		_, _ = io.WriteString(nc, "POST "+path+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{")
		_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
		resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err != nil {
			t.Fatalf("%s: no answer to a head declaring 1 GB: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
			t.Errorf("%s: %d (close %v) %s, want 413 and the connection closed", path, resp.StatusCode, resp.Close, body)
		}
		if path == "/rpc" && !strings.Contains(string(body), `"code":-32008`) {
			t.Errorf("%s: body %s, want -32008", path, body)
		}
	}
}
