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
)

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
	// Client makes the requests (a client with a 30s response-header timeout).
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
	if o.Client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.ResponseHeaderTimeout = 30 * time.Second
		o.Client = &http.Client{Transport: t}
	}
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

// Fetch downloads o.URL to o.Dest. Its errors are one line a user can act on.
func Fetch(ctx context.Context, o Options) (Result, error) {
	o.setDefaults()
	want, err := o.check()
	if err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(filepath.Dir(o.Dest), 0o755); err != nil { //nolint:gosec // the model folder is shared with the server container
		return Result{}, fmt.Errorf("create the folder of %s: %w", o.Dest, err)
	}
	if done, err := upToDate(ctx, &o, want); err != nil || done {
		return Result{UpToDate: done}, err
	}
	return Result{}, fetchLoop(ctx, &o, want)
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

// fetchLoop downloads into Dest.part with retries, verifies and installs it.
func fetchLoop(ctx context.Context, o *Options, want string) error {
	part := o.Dest + ".part"
	bo := backoff{min: o.BackoffMin, max: o.BackoffMax}
	restarted := false
	for attempt := 1; ; attempt++ {
		resumed, err := download(ctx, o, part)
		if err == nil {
			err = verify(part, want)
			if errors.Is(err, ErrChecksum) && resumed && !restarted {
				// The resumed part may come from another version of the file: start over once.
				o.Log.Info("checksum mismatch after resuming; downloading from the start", "url", o.URL)
				restarted = true
				_ = os.Remove(part)
				attempt--
				continue
			}
			if err != nil {
				_ = os.Remove(part)
				return err
			}
			return install(part, o.Dest)
		}
		var perm *permanentError
		if errors.As(err, &perm) || ctx.Err() != nil || attempt >= o.Attempts {
			return err
		}
		d := bo.next()
		o.Log.Info("download failed; retrying", "attempt", attempt, "of", o.Attempts, "retry_in", d.Round(time.Millisecond).String(), "error", err.Error())
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// upToDate reports whether the destination already holds the file: its SHA-256 matches,
// or (without one) its size is the server's Content-Length.
func upToDate(ctx context.Context, o *Options, want string) (bool, error) {
	st, err := os.Stat(o.Dest)
	if err != nil {
		return false, nil
	}
	if want != "" {
		got, err := hashFile(o.Dest)
		if err != nil {
			return false, err
		}
		if got == want {
			o.Log.Info("destination already matches the checksum; nothing to download", "dest", o.Dest)
			return true, nil
		}
		o.Log.Info("destination differs from the checksum; downloading again", "dest", o.Dest)
		return false, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, o.URL, nil)
	if err != nil {
		return false, err
	}
	resp, err := o.Client.Do(req)
	if err != nil {
		return false, nil
	}
	_ = resp.Body.Close()
	if resp.StatusCode == http.StatusOK && resp.ContentLength == st.Size() {
		o.Log.Info("destination has the server's size; nothing to download (give --sha256 to verify content)", "dest", o.Dest, "bytes", st.Size())
		return true, nil
	}
	return false, nil
}

// download fetches the rest of the file into part, resuming from its size. resumed is
// true when bytes from an earlier attempt were kept.
func download(ctx context.Context, o *Options, part string) (resumed bool, err error) {
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE, 0o644) //nolint:gosec // the server container reads the model
	if err != nil {
		return false, &permanentError{fmt.Errorf("open %s: %w", part, err)}
	}
	defer func() { _ = f.Close() }()
	offset, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return false, &permanentError{err}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.URL, nil)
	if err != nil {
		return false, &permanentError{err}
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := o.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("GET %s: %w", o.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	total, start, complete, err := prepare(o, resp, f, offset)
	if err != nil || complete {
		return complete, err
	}
	resumed = start > 0
	p := &progress{log: o.Log, every: o.ProgressEvery, done: start, total: total, start: time.Now(), base: start, last: time.Now()}
	if err := copyBody(ctx, cancel, o, resp.Body, f, p); err != nil {
		return resumed, err
	}
	if total >= 0 && p.done != total {
		return resumed, fmt.Errorf("GET %s: got %d of %d bytes", o.URL, p.done, total)
	}
	if err := f.Sync(); err != nil {
		return resumed, &permanentError{err}
	}
	p.finish()
	return resumed, nil
}

// prepare reads the response status: where the body starts in the file (0 after a
// truncation, offset when resumed), the whole size (-1 if unknown), or complete when the
// part already holds the whole file.
func prepare(o *Options, resp *http.Response, f *os.File, offset int64) (total, start int64, complete bool, err error) {
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		first, size, ok := contentRange(resp.Header.Get("Content-Range"))
		if !ok || first != offset {
			return 0, 0, false, fmt.Errorf("GET %s: the server resumed at the wrong place (Content-Range %q, want byte %d)", o.URL, resp.Header.Get("Content-Range"), offset)
		}
		o.Log.Info("resuming download", "url", o.URL, "from_byte", offset)
		return size, offset, false, nil
	case resp.StatusCode == http.StatusOK:
		if offset > 0 {
			o.Log.Info("the server does not resume downloads; starting over", "url", o.URL)
		}
		if err := f.Truncate(0); err != nil {
			return 0, 0, false, &permanentError{err}
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, 0, false, &permanentError{err}
		}
		return resp.ContentLength, 0, false, nil
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0:
		// The part may already be whole; verification decides.
		if _, size, ok := contentRange(resp.Header.Get("Content-Range")); ok && size == offset {
			return size, offset, true, nil
		}
		_ = f.Truncate(0)
		return 0, 0, false, fmt.Errorf("GET %s: the partial download does not fit the file on the server; starting over", o.URL)
	}
	err = fmt.Errorf("GET %s: %s", o.URL, resp.Status)
	if permanentStatus(resp.StatusCode) {
		return 0, 0, false, &permanentError{fmt.Errorf("%w: %s", err, statusHint(resp.StatusCode))}
	}
	return 0, 0, false, err
}

// copyBody writes the body to f, cancelling the request when no byte comes for
// StallTimeout.
func copyBody(ctx context.Context, cancel context.CancelCauseFunc, o *Options, body io.Reader, f *os.File, p *progress) error {
	stall := time.AfterFunc(o.StallTimeout, func() { cancel(fmt.Errorf("no data for %s", o.StallTimeout)) })
	defer stall.Stop()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(o.StallTimeout)
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
			return fmt.Errorf("GET %s: after %d bytes: %w", o.URL, p.done, rerr)
		}
	}
}

// contentRange parses "bytes START-END/SIZE" (or "bytes */SIZE").
func contentRange(h string) (start, size int64, ok bool) {
	rest, found := strings.CutPrefix(h, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, sz, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, false
	}
	size, err := strconv.ParseInt(sz, 10, 64)
	if err != nil {
		size = -1
	}
	if rng == "*" {
		return 0, size, true
	}
	s, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err = strconv.ParseInt(s, 10, 64)
	return start, size, err == nil
}

func permanentStatus(code int) bool {
	return code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests
}

func statusHint(code int) string {
	switch code {
	case http.StatusNotFound, http.StatusGone:
		return "the file is not on the server; check the URL"
	case http.StatusUnauthorized, http.StatusForbidden:
		return "the server refuses access; check the URL (a signed URL may have expired)"
	}
	return "the server refused the request; check the URL"
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
