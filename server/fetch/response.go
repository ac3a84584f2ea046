package fetch

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
)

// span is what one response brings: bytes [start, start+length) of a file of total
// bytes. Nothing a server says is taken on trust: every number is checked against the
// request, the earlier answers and MaxSize before a byte is written.
type span struct {
	start int64
	// length is what the body must hold (-1: until it ends, at most MaxSize-start).
	length int64
	// total is the file's size (-1: unknown).
	total int64
	// complete: the part already holds the whole file (a 416 that says so).
	complete bool
}

// end is the offset just past the span (-1 when unknown).
func (s span) end() int64 {
	if s.length < 0 {
		return -1
	}
	return s.start + s.length
}

// prepare checks a response against the request (resuming at offset) and returns the
// span its body covers. It truncates the part when the download must start over.
func prepare(d *downloader, resp *http.Response, f *os.File, offset int64) (span, error) {
	if err := checkEncoding(d, resp); err != nil {
		return span{}, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		s, err := rangeSpan(d, resp, offset)
		if err != nil {
			return span{}, startOver(f, err)
		}
		d.Log.Info("resuming download", "url", d.URL, "from_byte", offset)
		return s, nil
	case http.StatusOK:
		if offset > 0 {
			d.Log.Info("the server does not resume downloads; starting over", "url", d.URL)
		}
		if err := f.Truncate(0); err != nil {
			return span{}, &permanentError{err}
		}
		return wholeSpan(d, resp)
	case http.StatusRequestedRangeNotSatisfiable:
		// The part may already be whole; verification decides.
		if r, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && r.unsatisfied && r.size == offset && offset > 0 {
			return span{start: offset, length: 0, total: offset, complete: true}, nil
		}
		return span{}, startOver(f, fmt.Errorf("GET %s: the partial download (%d bytes) does not fit the file on the server (Content-Range %q); starting over",
			d.URL, offset, resp.Header.Get("Content-Range")))
	}
	err := fmt.Errorf("GET %s: %s", d.URL, resp.Status)
	if permanentStatus(resp.StatusCode) {
		return span{}, &permanentError{fmt.Errorf("%w: %s", err, statusHint(resp.StatusCode))}
	}
	return span{}, err
}

// checkEncoding refuses a compressed body: fetch asks for the bytes as stored
// (Accept-Encoding: identity), and a compressed body would be installed as the file, or
// mixed with the stored bytes after a resume.
func checkEncoding(d *downloader, resp *http.Response) error {
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return &permanentError{fmt.Errorf("GET %s: the server sent the file compressed (Content-Encoding %s) although it was asked for the bytes as stored; fix the server", d.URL, ce)}
	}
	return nil
}

// wholeSpan is the span of a 200 answer: the whole file, of Content-Length bytes. A
// body with no length that ends when the connection closes (HTTP/1.x, neither chunked
// nor sized) cannot be told from one cut short, so it is taken only with --sha256.
func wholeSpan(d *downloader, resp *http.Response) (span, error) {
	n := resp.ContentLength
	if n > d.MaxSize {
		return span{}, tooLarge(d, n)
	}
	if n < 0 && d.SHA256 == "" && !framed(resp) {
		return span{}, &permanentError{fmt.Errorf("GET %s: the server sent no Content-Length and ends the file by closing the connection, "+
			"so a cut download cannot be told from a whole one; give --sha256", d.URL)}
	}
	return span{start: 0, length: n, total: n}, nil
}

// framed reports whether the body's end is marked by the protocol (chunked encoding, or
// HTTP/2 and later), so a connection cut early is an error rather than an end.
func framed(resp *http.Response) bool {
	return resp.ProtoMajor >= 2 || slices.Contains(resp.TransferEncoding, "chunked")
}

// rangeSpan checks a 206 answer: its Content-Range starts where the part ends, ends
// within the file, agrees with the Content-Length, and the file's size is known,
// within MaxSize, and the one earlier answers gave.
func rangeSpan(d *downloader, resp *http.Response, offset int64) (span, error) {
	h := resp.Header.Get("Content-Range")
	r, ok := parseContentRange(h)
	bad := func(why string) error {
		return fmt.Errorf("GET %s: the server answered the request for bytes %d- with Content-Range %q: %s; starting over", d.URL, offset, h, why)
	}
	switch {
	case !ok || r.unsatisfied:
		return span{}, bad("not a byte range")
	case r.first != offset:
		return span{}, bad("it starts at the wrong place")
	case r.size < 0:
		return span{}, bad("the file's size is not given")
	case r.last >= r.size:
		return span{}, bad("it ends past the end of the file")
	case r.size > d.MaxSize:
		return span{}, tooLarge(d, r.size)
	case resp.ContentLength >= 0 && resp.ContentLength != r.last-r.first+1:
		return span{}, bad(fmt.Sprintf("the body has %d bytes", resp.ContentLength))
	case d.size >= 0 && r.size != d.size:
		return span{}, bad(fmt.Sprintf("an earlier answer gave the file %d bytes: it changed on the server", d.size))
	}
	return span{start: r.first, length: r.last - r.first + 1, total: r.size}, nil
}

// startOver empties the part (whose bytes cannot be trusted to continue the file the
// server now has) and returns err, which is retried.
func startOver(f *os.File, err error) error {
	if terr := f.Truncate(0); terr != nil {
		return &permanentError{errors.Join(err, terr)}
	}
	return err
}

func tooLarge(d *downloader, n int64) error {
	return &permanentError{fmt.Errorf("GET %s: the file has %d bytes, more than --max-size %d; raise --max-size if the file is meant to be that large", d.URL, n, d.MaxSize)}
}

// contentRange is a parsed Content-Range: "bytes FIRST-LAST/SIZE", SIZE "*" (-1) when
// unknown, or "bytes */SIZE" (unsatisfied).
type contentRange struct {
	first, last, size int64
	unsatisfied       bool
}

func parseContentRange(h string) (contentRange, bool) {
	rest, found := strings.CutPrefix(h, "bytes ")
	if !found {
		return contentRange{}, false
	}
	rng, sz, found := strings.Cut(rest, "/")
	if !found {
		return contentRange{}, false
	}
	r := contentRange{size: -1}
	if sz != "*" {
		n, err := strconv.ParseInt(sz, 10, 64)
		if err != nil || n < 0 {
			return contentRange{}, false
		}
		r.size = n
	}
	if rng == "*" {
		r.unsatisfied = true
		return r, r.size >= 0
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return contentRange{}, false
	}
	var err1, err2 error
	r.first, err1 = strconv.ParseInt(a, 10, 64)
	r.last, err2 = strconv.ParseInt(b, 10, 64)
	return r, err1 == nil && err2 == nil && r.first >= 0 && r.last >= r.first
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
