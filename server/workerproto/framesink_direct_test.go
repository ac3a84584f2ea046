//go:build cgo

package workerproto_test

import (
	"bytes"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
	"github.com/rkllm-operator/rkllm-operator/server/runtime"
	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

// The direct path is tested as a client meets it: the bytes read from the client's end
// of a socket must be the notifications the supervisor would have written, for the
// deliveries the supervisor is told of, and nothing else.

// directModel loads a simulator model whose words need JSON's care (escapes, HTML
// characters, line separators, multi-byte characters split into WAITING deliveries),
// plus extra words, replying reply tokens at tokensPerSecond (0: unpaced).
func directModel(t *testing.T, lib *runtime.Library, reply, tokensPerSecond int, extra ...string) *runtime.Handle {
	t.Helper()
	m := simulator.FastModel()
	m.Vocab = append(m.Vocab, " café", " 日本", "<b>&amp;", "\u2028\u2029", "\"quoted\\\"", "\ttab\n", "\x01\x1f", " 🙂")
	m.Vocab = append(m.Vocab, extra...)
	m.ReplyMinTokens, m.ReplyMaxTokens = reply, reply
	m.DecodeTokensPerSecond = float64(tokensPerSecond)
	return initModel(t, lib, m, 1)
}

// template is what rkllmrpc gives the worker: everything of a notification before the
// state and after the token id.
func template(chunked bool) *workerproto.Direct {
	return &workerproto.Direct{
		Socket:  1,
		Head:    `{"jsonrpc":"2.0","method":"rkllm.result","params":{"request_id":"r-0123","state":`,
		Tail:    "}}\n",
		Chunked: chunked,
	}
}

// notifications are the lines the supervisor writes for token deliveries, each with
// the bytes WAITING deliveries held before it, as its encoder does.
type notifications struct {
	d       *workerproto.Direct
	pending string
}

func (n *notifications) line(dl runtime.Delivery) []byte {
	r := dl.Results[0]
	state, text := "RKLLM_RUN_NORMAL", n.pending+r.Text
	if dl.State == runtime.StateWaiting {
		state, text = "RKLLM_RUN_WAITING", ""
		n.pending += r.Text
	} else {
		n.pending = ""
	}
	b := jsonrpc.AppendString([]byte(n.d.Head), state)
	b = jsonrpc.AppendString(append(b, `,"text":`...), text)
	b = strconv.AppendInt(append(b, `,"token_id":`...), int64(r.TokenID), 10)
	b = append(b, n.d.Tail...)
	if n.d.Chunked {
		b = append(append([]byte(strconv.FormatInt(int64(len(b)), 16)+"\r\n"), b...), "\r\n"...)
	}
	return b
}

// clientPair is a client's socket: the end the worker writes to, and what the client
// read from the other once it is closed. A client that keeps up reads as the run
// goes; one that falls behind reads only after the run.
func clientPair(t *testing.T, keepsUp bool) (int, func() []byte, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.SetNonblock(fds[0], true); err != nil { // as a Go server's socket is
		t.Fatal(err)
	}
	reader := os.NewFile(uintptr(fds[1]), "client")
	t.Cleanup(func() { _ = reader.Close(); _ = syscall.Close(fds[0]) })
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	readAll := func() {
		b, err := io.ReadAll(reader)
		done <- result{b, err}
	}
	if keepsUp {
		go readAll()
	}
	read := func() []byte {
		_ = syscall.Shutdown(fds[0], syscall.SHUT_WR)
		if !keepsUp {
			go readAll()
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("client read: %v", r.err)
		}
		return r.b
	}
	return fds[0], read, reader
}

// checkDirect checks a run's frames against what the client read: the direct ones,
// in front, are exactly what the client got (written bytes of the last one when it
// did not go whole); the rest came through the supervisor.
func checkDirect(t *testing.T, d *workerproto.Direct, frames []*workerproto.Delivery, client []byte) (direct, whole int) {
	t.Helper()
	n := notifications{d: d}
	var want []byte
	for i, f := range frames {
		if !f.Direct {
			for _, g := range frames[i:] {
				if g.Direct {
					t.Fatalf("frame %d: a direct delivery after one through the supervisor", i)
				}
			}
			break
		}
		direct++
		line := n.line(f.Delivery)
		if f.Whole {
			whole++
			if f.Written != len(line) {
				t.Errorf("frame %d: written %d, the notification is %d bytes", i, f.Written, len(line))
			}
			want = append(want, line...)
			continue
		}
		if f.Written >= len(line) {
			t.Errorf("frame %d: not whole but %d of %d bytes written", i, f.Written, len(line))
		}
		want = append(want, line[:f.Written]...)
		if i+1 < len(frames) && frames[i+1].Direct {
			t.Errorf("frame %d: a direct delivery after one that did not go whole", i+1)
		}
	}
	if !bytes.Equal(client, want) {
		t.Errorf("the client read %d bytes unlike the %d of the supervisor's notifications:\n%.600q\nwant\n%.600q", len(client), len(want), client, want)
	}
	return direct, whole
}

// A run writes each token to the client as the supervisor would have written its
// notification, line or chunk, and tells the supervisor of each delivery as before:
// the run's deliveries are the same as through Go alone.
func TestFrameSinkWritesTokensToTheClient(t *testing.T) {
	t.Setenv("RKLLM_SIM_TOKEN_PERF", "1")
	for _, abi := range []runtime.ABI{runtime.ABI12, runtime.ABI13} {
		for _, chunked := range []bool{false, true} {
			t.Run(string(abi)+"/chunked="+strconv.FormatBool(chunked), func(t *testing.T) {
				lib := simLibrary(t, abi)
				want := goRun(t, directModel(t, lib, 300, 0), batchOf(1), runtime.InferParams{})
				// Paced, so that a client reading as the tokens come never lets its
				// socket fill up (a busy machine's pauses included).
				p := newPipe(t, 0)
				got := p.read(t)
				client, read, _ := clientPair(t, true)
				d := template(chunked)
				if _, err := p.runTo(t, directModel(t, lib, 300, 3000), batchOf(1), runtime.InferParams{}, client, d); err != nil {
					t.Fatalf("run: %v", err)
				}
				_ = p.worker.Close()
				r := <-got
				if !reflect.DeepEqual(withoutTimes(r.deliveries), withoutTimes(want)) {
					t.Fatalf("the supervisor read deliveries unlike a run through Go:\n%+v\nwant\n%+v", withoutTimes(r.deliveries), withoutTimes(want))
				}
				direct, whole := checkDirect(t, d, r.frames, read())
				if tokens := tokensIn(want); direct != tokens || whole != tokens {
					t.Errorf("%d of %d tokens written directly (%d whole)", direct, tokens, whole)
				}
				var waiting, escaped bool
				for _, dl := range want {
					waiting = waiting || dl.State == runtime.StateWaiting
					escaped = escaped || len(dl.Results) > 0 && strings.ContainsAny(dl.Results[0].Text, "<\u2028\"\t\x01")
				}
				if !waiting || !escaped {
					t.Errorf("the reply has no WAITING delivery (%v) or no text to escape (%v): change the model", waiting, escaped)
				}
			})
		}
	}
}

// The longest token the direct path takes, every byte escaped to six, with the
// longest template, as a chunk: the line buffer holds it (the leak check runs this
// under AddressSanitizer).
func TestFrameSinkWritesTheLongestLine(t *testing.T) {
	lib := simLibrary(t, runtime.ABI13)
	longest := strings.Repeat("\x01", 2048) // WP_DIRECT_TEXT
	p := newPipe(t, 0)
	got := p.read(t)
	client, read, _ := clientPair(t, true)
	d := &workerproto.Direct{Socket: 1, Head: strings.Repeat("h", workerproto.MaxDirectTemplate), Tail: strings.Repeat("t", workerproto.MaxDirectTemplate), Chunked: true}
	if _, err := p.runTo(t, directModel(t, lib, 200, 4000, longest), batchOf(1), runtime.InferParams{}, client, d); err != nil {
		t.Fatalf("run: %v", err)
	}
	_ = p.worker.Close()
	r := <-got
	checkDirect(t, d, r.frames, read())
	for _, f := range r.frames {
		if len(f.Results) > 0 && f.Results[0].Text == longest {
			if !f.Direct || !f.Whole {
				t.Errorf("the longest token was not written directly whole (state %v, written %d)", f.State, f.Written)
			}
			return
		}
	}
	t.Error("no reply holds the longest token: change the model")
}

// A token the client's socket does not take whole ends the direct writes: the frame
// tells how much went out, and everything after goes through the supervisor, which
// writes the rest. So does a token too long for the direct path, and a client gone.
func TestFrameSinkStopsWritingToTheClient(t *testing.T) {
	lib := simLibrary(t, runtime.ABI13)
	run := func(t *testing.T, h *runtime.Handle, keepsUp bool, setup func(client int, reader *os.File)) (frames []*workerproto.Delivery, client []byte) {
		t.Helper()
		p := newPipe(t, 0)
		got := p.read(t)
		fd, read, reader := clientPair(t, keepsUp)
		setup(fd, reader)
		d := template(false)
		if _, err := p.runTo(t, h, batchOf(1), runtime.InferParams{}, fd, d); err != nil {
			t.Fatalf("run: %v", err)
		}
		_ = p.worker.Close()
		r := <-got
		var b []byte
		if reader.Fd() != ^uintptr(0) {
			b = read()
		}
		checkDirect(t, d, r.frames, b)
		return r.frames, b
	}
	t.Run("client falls behind", func(t *testing.T) {
		frames, _ := run(t, directModel(t, lib, 600, 0), false, func(client int, reader *os.File) {
			// A few KiB of room and a client that reads only after the run.
			_ = syscall.SetsockoptInt(client, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4096)
			_ = syscall.SetsockoptInt(int(reader.Fd()), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		cut := -1
		for i, f := range frames {
			if f.Direct && !f.Whole {
				cut = i
			}
		}
		if cut < 1 || tokensIn(deliveries(frames[cut+1:])) == 0 {
			t.Errorf("the direct writes did not stop partway (at frame %d of %d)", cut, len(frames))
		}
	})
	t.Run("token too long", func(t *testing.T) {
		long := strings.Repeat("y", 3000) // over WP_DIRECT_TEXT, under a frame's
		frames, _ := run(t, directModel(t, lib, 300, 0, long), true, func(int, *os.File) {})
		for i, f := range frames {
			if len(f.Results) > 0 && f.Results[0].Text == long {
				if f.Direct {
					t.Errorf("frame %d: the long token was written directly", i)
				}
				return
			}
		}
		t.Error("no reply holds the long token: change the model")
	})
	t.Run("client gone", func(t *testing.T) {
		frames, _ := run(t, directModel(t, lib, 50, 0), false, func(_ int, reader *os.File) { _ = reader.Close() })
		if len(frames) == 0 || !frames[0].Direct || frames[0].Whole || frames[0].Written != 0 {
			t.Fatalf("first frame %+v, want a direct delivery of which nothing was written", frames[0])
		}
		if tokensIn(deliveries(frames[1:])) == 0 {
			t.Error("no token went through the supervisor after the client was found gone")
		}
	})
}

// Reclaim stops a run's direct writes: once it returns, every token goes through the
// supervisor (which the client's other messages then follow).
func TestFrameSinkReclaim(t *testing.T) {
	lib := simLibrary(t, runtime.ABI13)
	p := newPipe(t, 0)
	seen := 0
	p.onDelivery = func(*workerproto.Delivery) {
		if seen++; seen == 20 {
			p.sink.Reclaim(2) // another socket's number: nothing changes
			p.sink.Reclaim(1)
		}
	}
	got := p.read(t)
	client, read, _ := clientPair(t, true)
	d := template(false)
	if _, err := p.runTo(t, directModel(t, lib, 200, 2000), batchOf(1), runtime.InferParams{}, client, d); err != nil {
		t.Fatalf("run: %v", err)
	}
	_ = p.worker.Close()
	r := <-got
	direct, whole := checkDirect(t, d, r.frames, read())
	// The supervisor reads the 20th token's frame up to WP_HOLD_NS (5 ms: 10 tokens
	// here) after the client had it.
	if direct < 20 || direct != whole || direct > 40 {
		t.Errorf("%d tokens written directly (%d whole), want the 20 before Reclaim and the few written since", direct, whole)
	}
	if tokensIn(r.deliveries) < 150 {
		t.Errorf("only %d tokens", tokensIn(r.deliveries))
	}
}

func deliveries(frames []*workerproto.Delivery) []runtime.Delivery {
	out := make([]runtime.Delivery, len(frames))
	for i, f := range frames {
		out[i] = f.Delivery
	}
	return out
}

// A template over MaxDirectTemplate is refused (the worker then leaves the run's tokens
// to the supervisor), and the sink still serves the next run.
func TestFrameSinkRefusesALongTemplate(t *testing.T) {
	p := newPipe(t, 0)
	client, _, _ := clientPair(t, true)
	long := strings.Repeat("h", workerproto.MaxDirectTemplate+1)
	for _, d := range []*workerproto.Direct{{Socket: 1, Head: long, Tail: "}}\n"}, {Socket: 1, Head: "{", Tail: long}} {
		if _, err := p.sink.For(runID, client, d); err == nil {
			t.Errorf("a template of %d + %d bytes was taken", len(d.Head), len(d.Tail))
		}
	}
	if _, err := p.sink.For(runID, client, template(false)); err != nil {
		t.Errorf("a template within the limit after a refused one: %v", err)
	}
}
