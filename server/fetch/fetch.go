// Package fetch downloads a model file for `rkllm-server fetch`, the operator's init
// container: it resumes partial downloads with HTTP Range requests, verifies a SHA-256,
// writes the destination atomically, skips a destination that already matches, logs
// progress, and retries transient failures with backoff.
package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
)

// DefaultMaxSize is the default of Options.MaxSize: 32 GiB, above the largest model
// an RK3588 board (32 GB of memory at most) can load.
const DefaultMaxSize int64 = 32 << 30

// Options configure a download. Zero values take the defaults in brackets.
type Options struct {
	URL  string
	Dest string
	// SHA256 is the expected hex digest; empty skips verification.
	SHA256 string
	// Attempts is how many times a transient failure is tried (5).
	Attempts int
	// BackoffMin and BackoffMax bound the delay between attempts (1s, 30s).
	BackoffMin, BackoffMax time.Duration
	// ProgressEvery is the interval of progress log lines (5s).
	ProgressEvery time.Duration
	// StallTimeout aborts an attempt that receives no byte for this long (60s).
	StallTimeout time.Duration
	// MaxSize is the largest file accepted, in bytes (DefaultMaxSize). A server that
	// announces more is refused at once; one that sends more is cut off there.
	MaxSize int64
	// AllowInsecureRedirect follows redirects from https to plain http (refused by
	// default).
	AllowInsecureRedirect bool
	// LockRetry is how often a fetch waiting for another writer of Dest tries the lock
	// again (DefaultLockRetry).
	LockRetry time.Duration
	// Client makes the requests (a client with a 30s response-header timeout). Its
	// redirect policy is replaced by fetch's own (checkRedirect).
	Client *http.Client
	Log    logr.Logger
}

func (o *Options) setDefaults() {
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = time.Second
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 30 * time.Second
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 5 * time.Second
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 60 * time.Second
	}
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultMaxSize
	}
	if o.Client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = 30 * time.Second
		t.DisableCompression = true
		o.Client = &http.Client{Transport: t}
	}
	c := *o.Client
	c.CheckRedirect = o.checkRedirect
	o.Client = &c
}

// permanentError is a failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// ErrChecksum is wrapped by the error for a download whose SHA-256 is not the one asked.
var ErrChecksum = errors.New("sha256 mismatch")

// Result says what Fetch did.
type Result struct {
	// UpToDate is true when Dest already held the file and nothing was downloaded.
	UpToDate bool
}

// downloader is one Fetch: its options and what earlier attempts learned.
type downloader struct {
	*Options
	want string // the wanted digest, lower case ("" when none)
	part string
	// size is the file's size as the first answer that gave it said (-1: not yet
	// known); a later answer that disagrees means the file changed on the server.
	size int64
}

// Fetch downloads o.URL to o.Dest. It holds Dest's Lock (AcquireLock) throughout, so
// one process writes a destination while others wait for its result. Nothing a server
// sends is installed unless it is whole: the size the server announced (or, when it
// announced none, a protocol-marked end or the checksum), within MaxSize, and the
// SHA-256 when one is given. Its errors are one line a user can act on.
func Fetch(ctx context.Context, o Options) (Result, error) {
	o.setDefaults()
	want, err := o.check()
	if err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(filepath.Dir(o.Dest), 0o755); err != nil { //nolint:gosec // the model folder is shared with the server container
		return Result{}, fmt.Errorf("create the folder of %s: %w", o.Dest, err)
	}
	lock, err := AcquireLock(ctx, o.Dest, o.LockRetry, o.Log)
	if err != nil {
		return Result{}, err
	}
	defer func() { _ = lock.Unlock() }()
	d := &downloader{Options: &o, want: want, part: o.Dest + ".part", size: -1}
	if done, err := d.upToDate(ctx); err != nil || done {
		return Result{UpToDate: done}, err
	}
	return Result{}, d.loop(ctx)
}

// check validates the options and returns the wanted digest in lower case.
func (o *Options) check() (string, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--url %q: must be an http:// or https:// URL", o.URL)
	}
	if o.Dest == "" {
		return "", errors.New("--dest is required: the file to write")
	}
	want := strings.ToLower(strings.TrimSpace(o.SHA256))
	if want != "" {
		if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
			return "", fmt.Errorf("--sha256 %q: must be 64 hex digits", o.SHA256)
		}
	}
	return want, nil
}

// loop downloads into the part with retries, verifies and installs it.
func (d *downloader) loop(ctx context.Context) error {
	bo := backoff{min: d.BackoffMin, max: d.BackoffMax}
	restarted := false
	for attempt := 1; ; attempt++ {
		resumed, err := d.download(ctx)
		if err == nil {
			err = verify(d.part, d.want)
			if errors.Is(err, ErrChecksum) && resumed && !restarted {
				// The resumed part may come from another version of the file: start over once.
				d.Log.Info("checksum mismatch after resuming; downloading from the start", "url", d.URL)
				restarted = true
				_ = os.Remove(d.part)
				attempt--
				continue
			}
			if err != nil {
				_ = os.Remove(d.part)
				return err
			}
			return install(d.part, d.Dest)
		}
		var perm *permanentError
		if errors.As(err, &perm) || ctx.Err() != nil || attempt >= d.Attempts {
			return err
		}
		wait := bo.next()
		d.Log.Info("download failed; retrying", "attempt", attempt, "of", d.Attempts, "retry_in", wait.Round(time.Millisecond).String(), "error", err.Error())
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// upToDate reports whether the destination already holds the file: its SHA-256 matches,
// or (without one) its size is the server's Content-Length.
func (d *downloader) upToDate(ctx context.Context) (bool, error) {
	st, err := os.Stat(d.Dest)
	if err != nil {
		return false, nil
	}
	if d.want != "" {
		got, err := hashFile(d.Dest)
		if err != nil {
			return false, err
		}
		if got == d.want {
			d.Log.Info("destination already matches the checksum; nothing to download", "dest", d.Dest)
			return true, nil
		}
		d.Log.Info("destination differs from the checksum; downloading again", "dest", d.Dest)
		return false, nil
	}
	req, err := d.request(ctx, http.MethodHead, 0)
	if err != nil {
		return false, err
	}
	resp, err := d.Client.Do(req)
	if err != nil {
		return false, nil
	}
	_ = resp.Body.Close()
	if resp.StatusCode == http.StatusOK && resp.ContentLength == st.Size() {
		d.Log.Info("destination has the server's size; nothing to download (give --sha256 to verify content)", "dest", d.Dest, "bytes", st.Size())
		return true, nil
	}
	return false, nil
}

// request builds a request for the file, from byte offset on, asking for the bytes as
// stored (no compression, which would break resuming and the size checks).
func (d *downloader) request(ctx context.Context, method string, offset int64) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, d.URL, nil)
	if err != nil {
		return nil, &permanentError{err}
	}
	req.Header.Set("Accept-Encoding", "identity")
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	return req, nil
}

// download fetches the rest of the file into the part, resuming from its size. resumed
// is true when bytes from an earlier attempt were kept. It returns nil only when the
// part holds the whole file as the server described it.
func (d *downloader) download(ctx context.Context) (resumed bool, err error) {
	f, err := os.OpenFile(d.part, os.O_WRONLY|os.O_CREATE, 0o644) //nolint:gosec // the server container reads the model
	if err != nil {
		return false, &permanentError{fmt.Errorf("open %s: %w", d.part, err)}
	}
	defer func() { _ = f.Close() }()
	offset, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, &permanentError{err}
	}
	if offset > d.MaxSize {
		offset = 0 // a part larger than any file accepted cannot be resumed
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := d.request(ctx, http.MethodGet, offset)
	if err != nil {
		return false, err
	}
	resp, err := d.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("GET %s: %w", d.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	s, err := prepare(d, resp, f, offset)
	if err != nil || s.complete {
		return s.complete, err
	}
	if s.total >= 0 {
		d.size = s.total
		if err := checkSpace(filepath.Dir(d.part), s.total-s.start); err != nil {
			return false, err
		}
	}
	return s.start > 0, d.receive(ctx, cancel, resp.Body, f, s)
}

// receive writes the span's body at its place in the part and checks that it was whole.
func (d *downloader) receive(ctx context.Context, cancel context.CancelCauseFunc, body io.Reader, f *os.File, s span) error {
	if _, err := f.Seek(s.start, io.SeekStart); err != nil {
		return &permanentError{err}
	}
	limit := s.length
	if limit < 0 {
		limit = d.MaxSize - s.start
	}
	p := &progress{log: d.Log, every: d.ProgressEvery, done: s.start, total: s.total, start: time.Now(), base: s.start, last: time.Now()}
	// One byte more than the span may hold shows a body longer than announced.
	if err := d.copyBody(ctx, cancel, io.LimitReader(body, limit+1), f, p); err != nil {
		return err
	}
	got := p.done - s.start
	switch {
	case got > limit && s.length < 0:
		_ = os.Remove(d.part)
		return &permanentError{fmt.Errorf("GET %s: the server sent more than --max-size %d bytes; raise --max-size if the file is meant to be that large", d.URL, d.MaxSize)}
	case got > limit:
		return startOver(f, fmt.Errorf("GET %s: the server sent more than the %d bytes it announced; starting over", d.URL, s.length))
	case got < limit && s.length >= 0:
		return fmt.Errorf("GET %s: got %d of %d bytes", d.URL, p.done, s.end())
	case s.total >= 0 && p.done != s.total:
		return fmt.Errorf("GET %s: the server sent bytes %d-%d of %d; resuming for the rest", d.URL, s.start, p.done-1, s.total)
	}
	if err := f.Sync(); err != nil {
		return &permanentError{err}
	}
	p.finish()
	return nil
}

// copyBody writes the body to f, cancelling the request when no byte comes for
// StallTimeout.
func (d *downloader) copyBody(ctx context.Context, cancel context.CancelCauseFunc, body io.Reader, f *os.File, p *progress) error {
	stall := time.AfterFunc(d.StallTimeout, func() { cancel(fmt.Errorf("no data for %s", d.StallTimeout)) })
	defer stall.Stop()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(d.StallTimeout)
			if _, err := f.Write(buf[:n]); err != nil {
				return &permanentError{fmt.Errorf("write %s: %w", f.Name(), err)}
			}
			p.add(int64(n))
		}
		if errors.Is(rerr, io.EOF) {
			return nil
		}
		if rerr != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				rerr = cause
			}
			return fmt.Errorf("GET %s: after %d bytes: %w", d.URL, p.done, rerr)
		}
	}
}

// checkSpace fails at once when the folder has less free space than the rest of the
// file needs, instead of after writing until the disk is full.
func checkSpace(dir string, need int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return nil //nolint:nilerr // unknown free space: writing will tell
	}
	free := int64(st.Bavail) * st.Bsize //nolint:gosec // block counts fit int64
	if need > free {
		return &permanentError{fmt.Errorf("%s has %d bytes free, the download needs %d more; free space or use a larger volume", dir, free, need)}
	}
	return nil
}

func verify(part, want string) error {
	if want == "" {
		return nil
	}
	got, err := hashFile(part)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%w: the download has sha256 %s but --sha256 is %s; the file on the server is not the one expected (fix the URL or the checksum)", ErrChecksum, got, want)
	}
	return nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// install renames the finished part over the destination, so readers never see half a
// file, and syncs the folder so the rename survives a crash.
func install(part, dest string) error {
	if err := os.Rename(part, dest); err != nil {
		return fmt.Errorf("move %s to %s: %w", part, dest, err)
	}
	if d, err := os.Open(filepath.Dir(dest)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// progress logs percent, rate and ETA every interval.
type progress struct {
	log         logr.Logger
	every       time.Duration
	done, total int64
	base        int64 // bytes present before this attempt
	start, last time.Time
}

func (p *progress) add(n int64) {
	p.done += n
	if time.Since(p.last) >= p.every {
		p.last = time.Now()
		p.report("downloading")
	}
}

func (p *progress) finish() { p.report("download complete") }

func (p *progress) report(msg string) {
	elapsed := time.Since(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.done-p.base) / elapsed
	}
	kv := []any{"bytes", p.done, "rate_mib_s", fmt.Sprintf("%.2f", rate/(1<<20))}
	if p.total > 0 {
		kv = append(kv, "percent", fmt.Sprintf("%.1f", 100*float64(p.done)/float64(p.total)), "total_bytes", p.total)
		if rate > 0 && p.done < p.total {
			kv = append(kv, "eta", (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second).String())
		}
	}
	p.log.Info(msg, kv...)
}

type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	d := b.min << min(b.n, 20)
	if d <= 0 || d > b.max {
		d = b.max
	}
	b.n++
	return d - d/5 + time.Duration(rand.Int64N(int64(d)/5*2+1)) //nolint:gosec // jitter, not a secret
}
