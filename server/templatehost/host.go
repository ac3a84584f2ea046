// Package templatehost renders Hugging Face (Jinja) chat templates where they cannot
// hurt the server: in renderer processes of their own, each bounded in time, memory,
// stack and output, and killed when a render breaks a bound or its client leaves.
//
// Why processes: a chat template is code from outside (often a model's
// tokenizer_config.json), and the template library (github.com/ardanlabs/jinja) has no
// step hook, no context and no output limit. In-process, a loop keeps a core busy after
// its client left, a growing output takes the server's memory, a recursing macro
// overflows the Go stack (a fatal error that no recover catches) and a bad operand
// panics. A goroutine cannot be stopped from outside; a process can. The renderers are
// long-lived (one exchange over pipes per render, tens of microseconds; see
// docs/benchmarks.md), not one per render, and started again only after one was killed.
package templatehost

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-logr/logr"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// Defaults of Options.
const (
	DefaultTimeout      = 2 * time.Second
	DefaultMaxMemory    = 256 << 20
	DefaultMaxOutput    = 32 << 20
	DefaultRenderers    = 2
	DefaultStartTimeout = 30 * time.Second
)

// Options configure a Host. Zero values take the defaults.
type Options struct {
	// Template is the template to render.
	Template *chattemplate.JinjaSource
	// Command returns the command of a renderer process, which must run Serve on its
	// stdin and stdout (`rkllm-server render-chat-template`).
	Command func() *exec.Cmd
	// Timeout bounds one render (--chat-template-timeout): past it the renderer is
	// killed and the render fails. It bounds every loop, since the library counts no
	// steps.
	Timeout time.Duration
	// MaxMemory is the memory one renderer may take beyond what it holds at start
	// (--chat-template-max-memory): its heap, stacks and the rendered text.
	MaxMemory int64
	// MaxOutput bounds the rendered prompt in bytes (--chat-template-max-output).
	MaxOutput int64
	// Renderers is the number of renderer processes (--chat-template-renderers): renders
	// beyond it wait for one to be free.
	Renderers int
	// StartTimeout bounds starting a renderer and compiling the template in it.
	StartTimeout time.Duration
	Log          logr.Logger
}

func (o *Options) setDefaults() {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.MaxOutput <= 0 {
		o.MaxOutput = DefaultMaxOutput
	}
	if o.Renderers <= 0 {
		o.Renderers = DefaultRenderers
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
}

// errTimeout is an exchange that got no answer in time.
var errTimeout = errors.New("timed out")

// ErrClosed is returned by Render after Close.
var ErrClosed = errors.New("the chat template renderers are shut down")

// Host is a chat template rendered by a pool of renderer processes. It implements
// chattemplate.Template; everything but Render is answered from the template's source
// without running it.
type Host struct {
	*chattemplate.JinjaSource
	o Options
	// slots hold the idle renderers, nil for one not (or no longer) running; a render
	// takes one and gives it back.
	slots chan *renderer

	mu     sync.Mutex
	closed bool
	live   map[*renderer]struct{}
}

// New returns a Host; no process starts before Start or the first Render.
func New(o Options) *Host {
	o.setDefaults()
	h := &Host{JinjaSource: o.Template, o: o, slots: make(chan *renderer, o.Renderers), live: map[*renderer]struct{}{}}
	for range o.Renderers {
		h.slots <- nil
	}
	return h
}

// TestConversation is what Start renders to accept a template: a user turn, the
// assistant's answer and a second user turn, which every chat template renders (no
// system message: some families, such as Gemma, refuse one).
func TestConversation() *chattemplate.Conversation {
	return &chattemplate.Conversation{Messages: []chattemplate.Message{
		{Role: chattemplate.RoleUser, Content: "Hello!"},
		{Role: chattemplate.RoleAssistant, Content: "Hello! How can I help you today?"},
		{Role: chattemplate.RoleUser, Content: "What is the capital of France?"},
	}}
}

// Start starts the renderers, each of which compiles the template, and renders
// TestConversation under the same bounds as any render. Its error says why the
// template is refused. (A renderer killed later is started again by the render that
// next finds its slot empty.)
func (h *Host) Start(ctx context.Context) error {
	c := TestConversation()
	prompt, err := h.Render(ctx, c)
	if err != nil {
		return fmt.Errorf("chat template %s is refused: rendering a test conversation (user, assistant, user): %w", h.ID, err)
	}
	if last := c.Messages[len(c.Messages)-1].Content; !strings.Contains(prompt, last) {
		return fmt.Errorf("chat template %s is refused: its prompt for a test conversation lacks the last user message %q: %q", h.ID, last, prompt)
	}
	taken := make([]*renderer, 0, h.o.Renderers)
	defer func() {
		for _, r := range taken {
			h.release(r)
		}
	}()
	for range h.o.Renderers {
		r, err := h.acquire(ctx)
		if err != nil {
			return err
		}
		taken = append(taken, r)
	}
	return nil
}

// Render implements chattemplate.Template: it renders c in a free renderer (starting one
// if needed), waiting for one while all are busy. A render that breaks a bound, or
// whose ctx ends, has its renderer killed; the next render starts another.
func (h *Host) Render(ctx context.Context, c *chattemplate.Conversation) (string, error) {
	req, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("%w: %v", chattemplate.ErrInvalid, err)
	}
	r, err := h.acquire(ctx)
	if err != nil {
		return "", err
	}
	prompt, err := r.render(ctx, req)
	h.release(r)
	return prompt, err
}

// acquire takes a free renderer, starting one in an empty slot (or in place of one
// that died while idle).
func (h *Host) acquire(ctx context.Context) (*renderer, error) {
	var r *renderer
	select {
	case r = <-h.slots:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		h.slots <- r
		return nil, ErrClosed
	}
	if r != nil && !r.isDead() {
		return r, nil
	}
	if r != nil { // it died while idle
		<-r.exited
		h.forget(r)
	}
	r, err := h.start(ctx)
	if err != nil {
		h.slots <- nil
		return nil, err
	}
	return r, nil
}

// release gives a renderer back; one that was killed is replaced in the background.
func (h *Host) release(r *renderer) {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if !r.isDead() && !closed {
		h.slots <- r
		return
	}
	r.kill("")
	<-r.exited
	h.forget(r)
	if closed {
		h.slots <- nil
		return
	}
	// Start the replacement now, so the next request does not wait for a process start
	// and a compile (tens of milliseconds); it holds the slot meanwhile.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), h.o.StartTimeout)
		defer cancel()
		next, err := h.start(ctx)
		if err != nil && !errors.Is(err, ErrClosed) {
			h.o.Log.Error(err, "cannot start a chat template renderer; the next request tries again")
		}
		h.slots <- next // nil on failure: the next render that takes the slot starts one
	}()
}

// Close kills every renderer; renders after it fail with ErrClosed.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	live := make([]*renderer, 0, len(h.live))
	for r := range h.live {
		live = append(live, r)
	}
	h.mu.Unlock()
	for _, r := range live {
		r.kill("")
		<-r.exited
	}
}

func (h *Host) forget(r *renderer) {
	h.mu.Lock()
	delete(h.live, r)
	h.mu.Unlock()
}

// start starts a renderer process and loads the template into it.
func (h *Host) start(ctx context.Context) (*renderer, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	h.mu.Unlock()
	r, err := spawn(h.o)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.live[r] = struct{}{}
	closed := h.closed
	h.mu.Unlock()
	if closed {
		r.kill("")
	}
	if err := r.load(ctx, h.o); err != nil {
		<-r.exited
		h.forget(r)
		return nil, err
	}
	return r, nil
}

// renderer is one renderer process.
type renderer struct {
	o      *Options
	log    logr.Logger
	cmd    *exec.Cmd
	in     *os.File
	w      *bufio.Writer
	r      *bufio.Reader
	out    *os.File
	stderr *stderrWatch
	exited chan struct{}

	mu     sync.Mutex
	dead   bool
	reason string // why the host killed it ("" if it died by itself)
}

func spawn(o Options) (*renderer, error) {
	cmd := o.Command()
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start a chat template renderer: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW)
		return nil, fmt.Errorf("start a chat template renderer: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		closeAll(inR, inW, outR, outW)
		return nil, fmt.Errorf("start a chat template renderer: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// A renderer must not outlive the server.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	err = cmd.Start()
	closeAll(inR, outW, errW) // the renderer's ends: EOF and EPIPE come when it dies
	if err != nil {
		closeAll(inW, outR, errR)
		return nil, fmt.Errorf("start a chat template renderer %s: %w", cmd.Path, err)
	}
	r := &renderer{o: &o, cmd: cmd, in: inW, w: bufio.NewWriterSize(inW, 64<<10), out: outR, r: bufio.NewReaderSize(outR, 64<<10),
		stderr: &stderrWatch{}, exited: make(chan struct{}), log: o.Log.WithValues("renderer_pid", cmd.Process.Pid)}
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		r.stderr.copy(errR, r.log)
		_ = errR.Close()
	}()
	go func() {
		_ = cmd.Wait()
		<-logsDone
		closeAll(inW, outR)
		r.mu.Lock()
		r.dead = true
		r.mu.Unlock()
		close(r.exited)
	}()
	return r, nil
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}

// load sends the template and waits for the renderer to have compiled it.
func (r *renderer) load(ctx context.Context, o Options) error {
	req, err := json.Marshal(loadRequest{Template: *o.Template, MaxMemory: o.MaxMemory, MaxOutput: o.MaxOutput})
	if err != nil {
		r.kill("")
		return err
	}
	status, text, err := r.exchange(ctx, req, o.StartTimeout)
	switch {
	case errors.Is(err, errTimeout):
		return fmt.Errorf("a chat template renderer did not start and compile %s within %s", o.Template.ID, o.StartTimeout)
	case err != nil:
		return fmt.Errorf("start a chat template renderer: %w", err)
	case status != statusOK:
		r.kill("")
		return fmt.Errorf("%w: %s", chattemplate.ErrInvalid, text)
	}
	return nil
}

// render renders one conversation (its JSON) and turns the answer into a prompt or an
// error.
func (r *renderer) render(ctx context.Context, req []byte) (string, error) {
	status, text, err := r.exchange(ctx, req, r.o.Timeout)
	if errors.Is(err, errTimeout) {
		return "", fmt.Errorf("%w: the chat template %s ran longer than --chat-template-timeout %s; the renderer was stopped", chattemplate.ErrInvalid, r.o.Template.ID, r.o.Timeout)
	}
	if err != nil {
		return "", err
	}
	switch status {
	case statusOK:
		return string(text), nil
	case statusOutput:
		return "", fmt.Errorf("%w: the chat template %s wrote a prompt of %s bytes, more than --chat-template-max-output %d", chattemplate.ErrInvalid, r.o.Template.ID, text, r.o.MaxOutput)
	}
	msg := strings.TrimPrefix(string(text), chattemplate.ErrInvalid.Error()+": ")
	return "", fmt.Errorf("%w: %s", chattemplate.ErrInvalid, msg)
}

// exchange sends one frame and reads the answer, within timeout (deadlines on the
// pipes) and while ctx lasts (its end kills the renderer, which ends the I/O). Any
// failure leaves the renderer dead.
func (r *renderer) exchange(ctx context.Context, req []byte, timeout time.Duration) (byte, []byte, error) {
	deadline := time.Now().Add(timeout)
	if err := errors.Join(r.in.SetWriteDeadline(deadline), r.out.SetReadDeadline(deadline)); err != nil {
		r.kill("")
		return 0, nil, fmt.Errorf("chat template renderer pipes: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { r.kill("the request ended (its client left or its time ran out)") })
	frame, err := r.roundTrip(req)
	stop()
	switch {
	case ctx.Err() != nil:
		r.kill("")
		<-r.exited
		return 0, nil, context.Cause(ctx)
	case errors.Is(err, os.ErrDeadlineExceeded):
		r.kill("no answer within " + timeout.String())
		<-r.exited
		return 0, nil, errTimeout
	case err != nil:
		r.kill("")
		<-r.exited
		return 0, nil, r.failure(err)
	}
	return frame[0], frame[1:], nil
}

// roundTrip writes req and reads the answer frame (never empty).
func (r *renderer) roundTrip(req []byte) ([]byte, error) {
	if err := writeFrame(r.w, req); err != nil {
		return nil, err
	}
	f, err := readFrame(r.r, r.o.MaxOutput+replySlack)
	if err == nil && len(f) == 0 {
		err = errors.New("empty answer")
	}
	return f, err
}

// failure explains a renderer that stopped answering by how it ended.
func (r *renderer) failure(ioErr error) error {
	w := r.stderr.snapshot()
	id := r.o.Template.ID
	switch {
	case w.recursion:
		return fmt.Errorf("%w: the chat template %s recursed too deeply (past the renderer's %d MiB stack); the renderer was stopped", chattemplate.ErrInvalid, id, maxStack>>20)
	case w.oom || r.cmd.ProcessState != nil && r.cmd.ProcessState.ExitCode() == exitMemory:
		return fmt.Errorf("%w: the chat template %s used more memory than --chat-template-max-memory %d; the renderer was stopped", chattemplate.ErrInvalid, id, r.o.MaxMemory)
	}
	state := "running"
	if ps := r.cmd.ProcessState; ps != nil {
		state = ps.String()
	}
	said := w.fatal
	if said == "" {
		said = w.lastLine
	}
	// The renderer died running the template on this conversation: the request's
	// failure, reported as such, with the runtime's own words.
	r.log.Info("chat template renderer crashed", "error", fmt.Sprint(ioErr), "state", state, "said", said)
	return fmt.Errorf("%w: the chat template %s crashed the renderer (%s: %s); the renderer was stopped", chattemplate.ErrInvalid, id, state, said)
}

// kill ends the process at once; reason, when given, is logged.
func (r *renderer) kill(reason string) {
	r.mu.Lock()
	if r.reason == "" {
		r.reason = reason
	}
	already := r.dead
	r.dead = true
	r.mu.Unlock()
	if reason != "" {
		r.log.Info("chat template renderer stopped", "reason", reason)
	}
	if !already {
		_ = r.cmd.Process.Kill()
	}
}

func (r *renderer) isDead() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dead
}

// stderrWatch drains what a renderer writes to stderr (so it never blocks on it),
// logs it at V(1), and keeps what tells why it died: the Go runtime's fatal-error
// lines, which come first in a traceback that may be thousands of lines long, and the
// last line.
type stderrWatch struct {
	mu sync.Mutex
	stderrSeen
}

// stderrSeen is what a renderer's stderr told.
type stderrSeen struct {
	recursion, oom  bool
	fatal, lastLine string
}

func (w *stderrWatch) snapshot() stderrSeen {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stderrSeen
}

// maxLine bounds one kept line.
const maxLine = 512

func (w *stderrWatch) copy(f *os.File, log logr.Logger) {
	br := bufio.NewReaderSize(f, 4096)
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			w.note(strings.TrimRight(string(chunk[:min(len(chunk), maxLine)]), "\n"), log)
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func (w *stderrWatch) note(line string, log logr.Logger) {
	log.V(1).Info("chat template renderer", "stderr", line)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case strings.Contains(line, "stack exceeds") || strings.Contains(line, "fatal error: stack overflow"):
		w.recursion = true
	case strings.Contains(line, "out of memory") || strings.Contains(line, "cannot allocate memory") || strings.Contains(line, "pthread_create failed") ||
		strings.Contains(line, "failed to allocate"): // the race detector's words
		w.oom = true
	}
	if w.fatal == "" && (strings.HasPrefix(line, "fatal error:") || strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "SIG")) {
		w.fatal = line
	}
	if strings.TrimSpace(line) != "" {
		w.lastLine = line
	}
}
