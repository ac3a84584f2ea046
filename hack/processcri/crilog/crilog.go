// Package crilog writes a container's output in the CRI log format the kubelet reads
// (`kubectl logs`, the termination-message fallback): one entry per line,
//
//	2026-12-07T08:32:54.123456789Z stdout F the line
//
// with the RFC 3339 time of the write, the stream, and F for a full line or P for a
// part of one: a line longer than MaxLine, or the unterminated last piece of output, is
// written as P entries the reader joins with the next entry of the same stream.
package crilog

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// MaxLine is the longest content of one entry (containerd's default is 16 KiB).
const MaxLine = 16 << 10

// Stream names a container output stream.
type Stream string

// The streams.
const (
	Stdout Stream = "stdout"
	Stderr Stream = "stderr"
)

// File is a container's log file. Both streams write to it; entries never interleave
// within a line. Reopen starts a new file at the same path (the kubelet rotates logs by
// renaming the file and asking the runtime to reopen it).
type File struct {
	path string
	mu   sync.Mutex
	f    *os.File
	now  func() time.Time
}

// Open opens (creating or appending to) the log file at path.
func Open(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening container log %s: %w", path, err)
	}
	return &File{path: path, f: f, now: time.Now}, nil
}

// Reopen closes the file and opens path again.
func (l *File) Reopen() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopening container log %s: %w", l.path, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.f
	l.f = f
	if old != nil {
		return old.Close()
	}
	return nil
}

// Close closes the file.
func (l *File) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// entry writes one entry; full says whether it ends a line.
func (l *File) entry(stream Stream, content []byte, full bool) error {
	tag := "P"
	if full {
		tag = "F"
	}
	var b bytes.Buffer
	b.Grow(len(content) + 48)
	b.WriteString(l.now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(string(stream))
	b.WriteByte(' ')
	b.WriteString(tag)
	b.WriteByte(' ')
	b.Write(content)
	b.WriteByte('\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return os.ErrClosed
	}
	_, err := l.f.Write(b.Bytes())
	return err
}

// Copy copies r (a container's stdout or stderr pipe) into the file as stream until r
// ends, and returns the first error of either side other than r's end. Output after a
// failed write is still read (and dropped), so a full disk never blocks the container.
func (l *File) Copy(stream Stream, r io.Reader) error {
	buf := make([]byte, 32<<10)
	var line []byte
	var werr error
	write := func(content []byte, full bool) {
		if werr == nil {
			werr = l.entry(stream, content, full)
		}
	}
	for {
		n, err := r.Read(buf)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				line = append(line, data...)
				data = nil
			} else {
				line = append(line, data[:i]...)
				data = data[i+1:]
				write(line, true)
				line = line[:0]
			}
			for len(line) >= MaxLine {
				write(line[:MaxLine], false)
				line = append(line[:0], line[MaxLine:]...)
			}
		}
		if err != nil {
			if len(line) > 0 {
				// The stream ended without a newline: the piece is a partial line.
				write(line, false)
			}
			if err == io.EOF {
				return werr
			}
			if werr != nil {
				return werr
			}
			return err
		}
	}
}
