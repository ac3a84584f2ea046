package socketapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/connlimit"
	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/outbuf"
)

const waitTimeout = 10 * time.Second

// testServer serves a dispatcher with methods that let tests hold requests, stream
// notifications and see cancellation.
type testServer struct {
	s        *Server
	path     string
	release  chan struct{} // closing it lets "hold" requests return
	started  chan string   // "hold" requests report their tag once admitted
	canceled chan string   // "hold" requests whose context ended
	flooded  chan error    // what "flood" saw: Notify's error, then its context's
	done     chan error
}

func newTestServer(t *testing.T, opts Options, lim ...jsonrpc.Limits) *testServer {
	t.Helper()
	ts := &testServer{release: make(chan struct{}), started: make(chan string, 16), canceled: make(chan string, 16),
		flooded: make(chan error, 2), done: make(chan error, 1)}
	d := jsonrpc.NewDispatcher(logr.Discard(), nil)
	for _, l := range lim {
		d.SetLimits(l)
	}
	// flood sends notifications of size bytes until Notify fails (the client does not
	// read), then waits for its request to be cancelled.
	d.Register("flood", jsonrpc.HandlerFunc(func(ctx context.Context, c *jsonrpc.Call) (any, error) {
		var p struct {
			Size int `json:"size"`
		}
		if err := c.DecodeParams(&p); err != nil {
			return nil, err
		}
		pad := strings.Repeat("z", p.Size)
		for i := 0; ; i++ {
			if err := c.Notify("pad", map[string]any{"i": i, "pad": pad}); err != nil {
				ts.flooded <- err
				break
			}
		}
		select {
		case <-ctx.Done():
			ts.flooded <- ctx.Err()
		case <-time.After(waitTimeout):
			ts.flooded <- errors.New("the request was not cancelled")
		}
		return nil, ctx.Err()
	}))
	d.Register("echo", jsonrpc.HandlerFunc(func(_ context.Context, c *jsonrpc.Call) (any, error) {
		var p map[string]any
		if err := c.DecodeParams(&p); err != nil {
			return nil, err
		}
		return map[string]any{"params": p, "admin": c.Peer.Admin, "transport": c.Peer.Transport}, nil
	}))
	d.Register("hold", jsonrpc.HandlerFunc(func(ctx context.Context, c *jsonrpc.Call) (any, error) {
		var p struct {
			Tag string `json:"tag"`
		}
		_ = c.DecodeParams(&p)
		// Reported before Admit: the next message is read only once this one is
		// admitted, so the reports come in the order sent.
		ts.started <- p.Tag
		c.Admit()
		select {
		case <-ts.release:
			return p.Tag, nil
		case <-ctx.Done():
			ts.canceled <- p.Tag
			return nil, jsonrpc.ErrAborted
		}
	}))
	d.Register("stream", jsonrpc.HandlerFunc(func(_ context.Context, c *jsonrpc.Call) (any, error) {
		for i := range 3 {
			if err := c.Notify("tick", map[string]int{"i": i}); err != nil {
				return nil, err
			}
		}
		return "streamed", nil
	}))
	opts.Path = filepath.Join(t.TempDir(), "rkllm.sock")
	opts.Log = logr.Discard()
	ts.path = opts.Path
	ts.s = New(d, opts)
	ln, err := ts.s.Listen()
	if err != nil {
		t.Fatal(err)
	}
	go func() { ts.done <- ts.s.Serve(ln) }()
	t.Cleanup(func() { _ = ts.s.Close() })
	return ts
}

type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dial(t *testing.T, path string) *client {
	t.Helper()
	var d net.Dialer
	nc, err := d.DialContext(context.Background(), "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &client{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *client) send(msg string) {
	c.t.Helper()
	if _, err := c.nc.Write([]byte(msg + "\n")); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) recv() map[string]any {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	line, err := c.br.ReadBytes('\n')
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		c.t.Fatalf("line %q: %v", line, err)
	}
	return m
}

func recvTag(t *testing.T, ch chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(waitTimeout):
		t.Fatal("timed out waiting for a request")
		return ""
	}
}

func TestRequestsNotificationsAndBatches(t *testing.T) {
	ts := newTestServer(t, Options{Admin: true})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":1}}`)
	if m := c.recv(); m["id"] != 1.0 || m["result"].(map[string]any)["admin"] != true || m["result"].(map[string]any)["transport"] != "unix" {
		t.Errorf("echo %v", m)
	}
	c.send(`{"jsonrpc":"2.0","id":"s","method":"stream"}`)
	for i := range 3 {
		m := c.recv()
		if m["method"] != "tick" || m["params"].(map[string]any)["i"] != float64(i) || m["id"] != nil {
			t.Fatalf("notification %d: %v", i, m)
		}
	}
	if m := c.recv(); m["id"] != "s" || m["result"] != "streamed" {
		t.Errorf("final %v", m)
	}
	c.send(`[{"jsonrpc":"2.0","id":1,"method":"echo"},{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","id":2,"method":"nope"}]`)
	_ = c.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	line, _ := c.br.ReadBytes('\n')
	var batch []map[string]any
	if err := json.Unmarshal(line, &batch); err != nil || len(batch) != 2 || batch[1]["error"].(map[string]any)["code"] != -32601.0 {
		t.Errorf("batch %s %v", line, err)
	}
	// Garbage gets a parse error and the connection goes on.
	c.send(`{"jsonrpc": nope`)
	if m := c.recv(); m["error"].(map[string]any)["code"] != -32700.0 {
		t.Errorf("garbage: %v", m)
	}
	c.send(`{"jsonrpc":"2.0","id":3,"method":"echo"}`)
	if m := c.recv(); m["id"] != 3.0 {
		t.Errorf("after garbage: %v", m)
	}
}

func TestTooLongLineKeepsTheConnection(t *testing.T) {
	ts := newTestServer(t, Options{MaxMessageBytes: 100})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"x":"` + strings.Repeat("a", 5000) + `"}}`)
	if m := c.recv(); m["error"].(map[string]any)["code"] != -32008.0 || m["id"] != nil {
		t.Errorf("long line: %v", m)
	}
	c.send(`{"jsonrpc":"2.0","id":2,"method":"echo"}`)
	if m := c.recv(); m["id"] != 2.0 || m["result"].(map[string]any)["admin"] != false {
		t.Errorf("after the long line: %v", m)
	}
}

// Several requests are in flight on one connection; answers come by id in the order
// they finish, and requests were admitted in the order they were sent.
func TestInFlightAndOrder(t *testing.T) {
	ts := newTestServer(t, Options{})
	c := dial(t, ts.path)
	for _, tag := range []string{"a", "b", "c"} {
		c.send(`{"jsonrpc":"2.0","id":"` + tag + `","method":"hold","params":{"tag":"` + tag + `"}}`)
	}
	for _, want := range []string{"a", "b", "c"} {
		if got := recvTag(t, ts.started); got != want {
			t.Fatalf("admitted %s, want %s", got, want)
		}
	}
	// All three are in flight; an echo is answered meanwhile.
	c.send(`{"jsonrpc":"2.0","id":9,"method":"echo"}`)
	if m := c.recv(); m["id"] != 9.0 {
		t.Fatalf("echo while holding: %v", m)
	}
	close(ts.release)
	got := map[any]bool{}
	for range 3 {
		m := c.recv()
		if m["result"] != m["id"] {
			t.Errorf("answer %v does not match its id", m)
		}
		got[m["id"]] = true
	}
	if len(got) != 3 {
		t.Errorf("answers %v", got)
	}
}

func TestDisconnectCancelsRequests(t *testing.T) {
	ts := newTestServer(t, Options{})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"hold","params":{"tag":"x"}}`)
	recvTag(t, ts.started)
	_ = c.nc.Close()
	if got := recvTag(t, ts.canceled); got != "x" {
		t.Fatalf("canceled %q", got)
	}
}

// A client that only shuts down its writing side still gets its answer.
func TestHalfCloseStillAnswers(t *testing.T) {
	ts := newTestServer(t, Options{})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"hold","params":{"tag":"y"}}`)
	recvTag(t, ts.started)
	if err := c.nc.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	close(ts.release)
	if m := c.recv(); m["result"] != "y" {
		t.Fatalf("answer after half-close: %v", m)
	}
	select {
	case tag := <-ts.canceled:
		t.Fatalf("request %s was cancelled after a half-close", tag)
	default:
	}
}

func TestConnectionLimit(t *testing.T) {
	ts := newTestServer(t, Options{Limiter: connlimit.New(1, 0, nil)})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"echo"}`)
	c.recv()
	extra := dial(t, ts.path)
	if m := extra.recv(); m["error"].(map[string]any)["code"] != -32002.0 {
		t.Fatalf("connection over the limit: %v", m)
	}
	if _, err := extra.br.ReadByte(); err == nil {
		t.Error("the rejected connection stayed open")
	}
	_ = c.nc.Close()
	// The slot is given back.
	eventually(t, "the slot is released", func() bool { return ts.s.opts.Limiter.Open() == 0 })
	c2 := dial(t, ts.path)
	c2.send(`{"jsonrpc":"2.0","id":2,"method":"echo"}`)
	if m := c2.recv(); m["id"] != 2.0 {
		t.Fatalf("after release: %v", m)
	}
}

func TestShutdownWaitsThenRemovesTheSocket(t *testing.T) {
	ts := newTestServer(t, Options{})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"hold","params":{"tag":"z"}}`)
	recvTag(t, ts.started)
	var wg sync.WaitGroup
	var shutdownErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		shutdownErr = ts.s.Shutdown(ctx)
	}()
	close(ts.release)
	if m := c.recv(); m["result"] != "z" {
		t.Fatalf("in-flight answer during shutdown: %v", m)
	}
	wg.Wait()
	if shutdownErr != nil {
		t.Fatal(shutdownErr)
	}
	if err := <-ts.done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve returned %v", err)
	}
	if _, err := os.Stat(ts.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left: %v", err)
	}
}

// TestClientThatStopsReadingIsCutOff: notifications for a client that does not read go
// into its bounded buffer without blocking the sender; when it overflows the client is
// disconnected and its requests cancelled.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	ts := newTestServer(t, Options{OutputBufferBytes: 64 << 10})
	c := dial(t, ts.path)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"flood","params":{"size":1000}}`)
	if err := <-ts.flooded; !errors.Is(err, outbuf.ErrOverflow) && !errors.Is(err, outbuf.ErrClosed) {
		t.Fatalf("Notify to a client that does not read: %v, want an overflow", err)
	}
	if err := <-ts.flooded; !errors.Is(err, context.Canceled) {
		t.Fatalf("the flooding request: %v, want cancelled", err)
	}
	// The connection was closed: after what reached it, the client reads EOF.
	_ = c.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if n, err := io.Copy(io.Discard, c.br); err != nil {
		t.Errorf("the client read %d bytes, then %v; want EOF", n, err)
	}
	eventually(t, "the connection to be forgotten", func() bool { return ts.connCount() == 0 })
}

// TestIdleTimeout: a connection that sends nothing and has nothing in flight is closed
// after the idle timeout; one waiting for an answer is not.
func TestIdleTimeout(t *testing.T) {
	ts := newTestServer(t, Options{IdleTimeout: 100 * time.Millisecond})
	busy := dial(t, ts.path)
	busy.send(`{"jsonrpc":"2.0","id":1,"method":"hold","params":{"tag":"w"}}`)
	recvTag(t, ts.started)
	idle := dial(t, ts.path)
	_ = idle.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := idle.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("idle connection: %v, want EOF", err)
	}
	// The busy one outlived the idle one and still answers.
	busy.send(`{"jsonrpc":"2.0","id":2,"method":"echo"}`)
	if m := busy.recv(); m["id"] != 2.0 {
		t.Fatalf("busy connection: %v", m)
	}
	close(ts.release)
	if m := busy.recv(); m["result"] != "w" {
		t.Fatalf("held answer: %v", m)
	}
	// Now it has nothing in flight: closed in turn.
	_ = busy.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := busy.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("connection idle after its answer: %v, want EOF", err)
	}
}

// TestSlowMessageIsCutOff: a message begun and not finished within the idle timeout
// closes the connection (a slow client cannot hold a slot).
func TestSlowMessageIsCutOff(t *testing.T) {
	ts := newTestServer(t, Options{IdleTimeout: 100 * time.Millisecond})
	c := dial(t, ts.path)
	if _, err := c.nc.Write([]byte(`{"jsonrpc":"2.0","id":1,"meth`)); err != nil {
		t.Fatal(err)
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("half a message, then silence: %v, want EOF", err)
	}
}

// TestInflightPerConnection: over its cap of messages in flight, a connection's next
// message is answered -32002 at once; the others go on.
func TestInflightPerConnection(t *testing.T) {
	ts := newTestServer(t, Options{}, jsonrpc.Limits{MaxPeerMessages: 2})
	c := dial(t, ts.path)
	for _, tag := range []string{"a", "b"} {
		c.send(`{"jsonrpc":"2.0","id":"` + tag + `","method":"hold","params":{"tag":"` + tag + `"}}`)
		recvTag(t, ts.started)
	}
	c.send(`{"jsonrpc":"2.0","id":3,"method":"echo"}`)
	m := c.recv()
	e, _ := m["error"].(map[string]any)
	if m["id"] != 3.0 || e == nil || e["code"] != -32002.0 || e["data"].(map[string]any)["limit"] != "max-inflight-per-connection" {
		t.Fatalf("third message in flight: %v", m)
	}
	// Another connection is not limited by this one's.
	other := dial(t, ts.path)
	other.send(`{"jsonrpc":"2.0","id":4,"method":"echo"}`)
	if m := other.recv(); m["id"] != 4.0 || m["error"] != nil {
		t.Fatalf("other connection: %v", m)
	}
	close(ts.release)
	for range 2 {
		c.recv()
	}
	c.send(`{"jsonrpc":"2.0","id":5,"method":"echo"}`)
	if m := c.recv(); m["id"] != 5.0 || m["error"] != nil {
		t.Fatalf("after the answers: %v", m)
	}
}

func (ts *testServer) connCount() int {
	ts.s.mu.Lock()
	defer ts.s.mu.Unlock()
	return len(ts.s.conns)
}

func TestListenReplacesOnlySockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := New(jsonrpc.NewDispatcher(logr.Discard(), nil), Options{Path: path})
	if _, err := s.Listen(); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("listen over a file: %v", err)
	}
}

// eventually polls cond until it holds, failing after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out after %s waiting until %s", waitTimeout, what)
		}
	}
}
