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
	"strconv"
	"syscall"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// maxStack bounds a renderer's goroutine stack: a template that recurses (a macro
// calling itself) overflows it and the renderer dies with "stack exceeds", which the
// host reports as too deep a recursion. Real chat templates nest a few levels.
const maxStack = 64 << 20

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
	for {
		frame, err := readFrame(r, math.MaxUint32)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read a render frame: %w", err)
		}
		status, text := render(j, frame, load.MaxOutput)
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

// limitSelf bounds the renderer: its data segment (heap, goroutine stacks, thread
// stacks) to what it uses now plus budget, so a template that allocates without end
// makes this process fail with "out of memory" instead of growing; the Go heap's soft
// limit to budget, so garbage is collected before the hard limit is near; the stack of
// a goroutine to maxStack; and one P, so a template that loops burns one core at most.
func limitSelf(budget int64) error {
	runtime.GOMAXPROCS(1)
	debug.SetMaxStack(min(maxStack, int(budget/4)))
	debug.SetMemoryLimit(budget)
	used, err := dataSize()
	if err != nil {
		return err
	}
	lim := uint64(used + budget) //nolint:gosec // both are positive and far below 2^63
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
