package templatehost

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"syscall"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// maxStack bounds a renderer's goroutine stack: a template that recurses (a macro
// calling itself) overflows it and the renderer dies with "stack exceeds", which the
// host reports as too deep a recursion. Real chat templates nest a few levels.
const maxStack = 16 << 20

// Serve is the renderer process (`rkllm-server render-chat-template`): it reads the
// load frame from in, limits its own memory, compiles the template, then renders each
// conversation it is sent until in ends. It returns nil at the end of in, or the error
// that ended it (a broken frame, a template that does not compile).
func Serve(in io.Reader, out io.Writer) error {
	r, w := bufio.NewReaderSize(in, 64<<10), bufio.NewWriterSize(out, 64<<10)
	frame, err := readFrame(r, math.MaxUint32)
	if err != nil {
		return fmt.Errorf("read the load frame: %w", err)
	}
	var load loadRequest
	if err := json.Unmarshal(frame, &load); err != nil {
		return fmt.Errorf("decode the load frame: %w", err)
	}
	if err := limitSelf(load.MaxMemory); err != nil {
		return err
	}
	j, err := compile(&load.Template)
	if err != nil {
		_ = writeFrame(w, []byte{statusInvalid}, []byte(err.Error()))
		return err
	}
	if err := writeFrame(w, []byte{statusOK}); err != nil {
		return err
	}
	// What the runtime holds when ready is not the render's: the budget counts from it.
	baseline := mappedNow()
	for {
		frame, err := readFrame(r, math.MaxUint32)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read a render frame: %w", err)
		}
		stop := watchMemory(load.MaxMemory, baseline)
		status, text := render(j, frame, load.MaxOutput)
		stop()
		if err := writeFrame(w, []byte{status}, text); err != nil {
			return err
		}
	}
}

// compile compiles the template, turning a panic of the parser into an error.
func compile(src *chattemplate.JinjaSource) (j *chattemplate.Jinja, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("chat template %s: the template library panicked compiling it: %v", src.ID, p)
		}
	}()
	return src.Compile()
}

// render renders one conversation. A panic of the library (such as {{ 'x' * -1 }}) is
// recovered into an error: each render has its own evaluator, so nothing of it
// outlives the render.
func render(j *chattemplate.Jinja, frame []byte, maxOutput int64) (status byte, text []byte) {
	var c chattemplate.Conversation
	if err := json.Unmarshal(frame, &c); err != nil {
		return statusInvalid, []byte("the renderer could not decode the conversation: " + err.Error())
	}
	prompt, err := func() (prompt string, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: the chat template %s failed: the template library panicked: %v", chattemplate.ErrInvalid, j.ID, p)
			}
		}()
		return j.Render(context.Background(), &c)
	}()
	switch {
	case err != nil:
		return statusInvalid, []byte(err.Error())
	case int64(len(prompt)) > maxOutput:
		return statusOutput, []byte(strconv.Itoa(len(prompt)))
	}
	return statusOK, []byte(prompt)
}

// exitMemory is the renderer's exit status when its memory watch stopped it.
const exitMemory = 3

// watchEvery is how often a render's memory is looked at.
const watchEvery = 2 * time.Millisecond

// watchMemory watches the memory the Go runtime has mapped while a render runs, and
// ends the renderer (exitMemory, with a line on stderr) once it is over budget. It
// catches a template that grows step by step with a clear cause; RLIMIT_DATA (limitSelf)
// remains the hard bound for a single huge allocation, which the runtime may report as
// "out of memory" or, in some of its paths, as a fault. It returns the function that
// stops the watch.
func watchMemory(budget, baseline int64) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(watchEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			if used := mappedNow(); used > budget+baseline {
				fmt.Fprintf(os.Stderr, "renderer: out of memory: %d bytes in use, over the budget of %d\n", used-baseline, budget)
				os.Exit(exitMemory)
			}
		}
	}()
	return func() { close(done) }
}

// limitSelf bounds the renderer: its data segment (heap, goroutine stacks, thread
// stacks) to what it uses now plus budget, so a template that allocates without end
// makes this process fail with "out of memory" instead of growing; the Go heap's soft
// limit to budget, so garbage is collected before the hard limit is near; the stack of
// a goroutine to maxStack; and two Ps: the render runs on one goroutine (a template
// that loops burns one core), the memory watch on the other, so it is not left waiting
// for the render to be preempted.
func limitSelf(budget int64) error {
	runtime.GOMAXPROCS(2)
	debug.SetMaxStack(min(maxStack, int(budget/4)))
	debug.SetMemoryLimit(budget)
	used, err := dataSize()
	if err != nil {
		return err
	}
	// Twice the budget: the memory watch stops gradual growth at the budget first.
	lim := uint64(used + 2*budget) //nolint:gosec // both are positive and far below 2^63
	if err := syscall.Setrlimit(syscall.RLIMIT_DATA, &syscall.Rlimit{Cur: lim, Max: lim}); err != nil {
		return fmt.Errorf("limit the renderer's memory (RLIMIT_DATA): %w", err)
	}
	return nil
}

// dataSize is the process's data segment now (VmData of /proc/self/status), the base
// RLIMIT_DATA counts from.
func dataSize() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read the renderer's memory use: %w", err)
	}
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(line, []byte("VmData:")); ok {
			f := bytes.Fields(v) // "1234 kB"
			if len(f) == 2 {
				kb, err := strconv.ParseInt(string(f[0]), 10, 64)
				if err == nil {
					return kb << 10, nil
				}
			}
		}
	}
	return 0, errors.New("read the renderer's memory use: no VmData in /proc/self/status")
}

// mappedNow is the memory the Go runtime has mapped and not released.
func mappedNow() int64 {
	samples := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(samples)
	return int64(samples[0].Value.Uint64() - samples[1].Value.Uint64()) //nolint:gosec // mapped bytes fit int64
}
