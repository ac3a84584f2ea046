package httpapi

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// refuseBody answers a request whose Content-Length is over MaxRequestBytes at once,
// without waiting for a body it will not read. The handler answers it its own way (on
// /rpc -32008, on /v1/ the OpenAI error): its first read of the body fails as
// http.MaxBytesReader's would. The answer is then written with Connection: close, and
// the connection lingers: what the client still sends is read and discarded, up to the
// body it declared and within BodyTimeout (the bound of any body), before it is
// closed. A client that writes its whole body before it reads its answer (most do)
// thus gets the answer instead of a connection reset, as with nginx's lingering close.
func (s *Server) refuseBody(h http.Handler, w http.ResponseWriter, r *http.Request) {
	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	r.Body = tooLarge{limit: s.opts.MaxRequestBytes}
	h.ServeHTTP(rec, r)
	rec.header.Set("Connection", "close")
	rec.header.Set("Content-Length", strconv.Itoa(rec.body.Len()))
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil { // a connection net/http keeps (HTTP/2): answer through it
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		_, _ = w.Write(rec.body.Bytes())
		return
	}
	defer func() { _ = nc.Close() }()
	_ = nc.SetDeadline(time.Now().Add(s.opts.WriteTimeout))
	_, _ = fmt.Fprintf(brw, "HTTP/1.1 %03d %s\r\n", rec.status, http.StatusText(rec.status))
	_ = rec.header.Write(brw)
	_, _ = brw.WriteString("\r\n")
	_, _ = brw.Write(rec.body.Bytes())
	if brw.Flush() != nil {
		return
	}
	_ = nc.SetDeadline(time.Now().Add(s.opts.BodyTimeout))
	_, _ = io.CopyN(io.Discard, brw, r.ContentLength)
}

// tooLarge is the body of a request whose Content-Length is over the limit: reading it
// fails as http.MaxBytesReader does when a body goes over.
type tooLarge struct{ limit int64 }

func (b tooLarge) Read([]byte) (int, error) { return 0, &http.MaxBytesError{Limit: b.limit} }
func (tooLarge) Close() error               { return nil }

// recorder holds a handler's short error answer until it is written.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if !r.wrote {
		r.status, r.wrote = status, true
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	return r.body.Write(p)
}
