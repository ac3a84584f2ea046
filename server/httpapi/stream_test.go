package httpapi

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// streamBody is what the "stream" method's NDJSON stream holds.
const streamBody = `{"jsonrpc":"2.0","method":"tick","params":{"i":0}}` + "\n" + `{"jsonrpc":"2.0","method":"tick","params":{"i":1}}` + "\n" +
	`{"jsonrpc":"2.0","method":"tick","params":{"i":2}}` + "\n" + `{"jsonrpc":"2.0","id":7,"result":"streamed"}` + "\n"

// TestStreamOnTheWire: an HTTP/1.1 stream, whose chunks the server writes to the
// connection itself, is a valid chunked body ending with the last chunk, and the
// connection serves the next request; an HTTP/1.0 stream, which cannot be chunked,
// goes through net/http and ends with the connection.
func TestStreamOnTheWire(t *testing.T) {
	f := newFixture(t, Options{})
	nc := rawConn(t, f)
	_ = nc.SetDeadline(time.Now().Add(waitTimeout))
	br := bufio.NewReader(nc)
	body := `{"jsonrpc":"2.0","id":7,"method":"stream"}`
	for i := range 3 { // the same keep-alive connection, stream after stream
		_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil || string(got) != streamBody || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || resp.Close {
			t.Fatalf("stream %d: %v %v close=%v\n%s\nwant a chunked body\n%s", i, err, resp.TransferEncoding, resp.Close, got, streamBody)
		}
	}
	_, _ = io.WriteString(nc, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a request after the streams: %v", err)
	}

	old := rawConn(t, f)
	_ = old.SetDeadline(time.Now().Add(waitTimeout))
	_, _ = io.WriteString(old, "POST /rpc HTTP/1.0\r\nHost: x\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
	resp, err := http.ReadResponse(bufio.NewReader(old), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	if err != nil || string(got) != streamBody || len(resp.TransferEncoding) != 0 {
		t.Errorf("HTTP/1.0 stream: %v %v\n%s\nwant the body until the end of the connection\n%s", err, resp.TransferEncoding, got, streamBody)
	}
}
