package kubeletnode

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestForwardJoinsConnections(t *testing.T) {
	var lc net.ListenConfig
	upstream, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = upstream.Close() }()
	go func() {
		c, err := upstream.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		line, _ := bufio.NewReader(c).ReadString('\n')
		_, _ = io.WriteString(c, "echo: "+line)
	}()
	front, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	f := Forward(front, func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", upstream.Addr().String())
	})
	defer f.Close()
	c, err := d.DialContext(t.Context(), "tcp", front.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "echo: hello\n" {
		t.Errorf("through the forwarder: %q, %v; want %q", got, err, "echo: hello\n")
	}
}

// TestEgressProxyRefusesOtherAddresses: the API server's egress proxy only dials into
// the node's network; before the node exists, and for any other address (a kwok pod's),
// CONNECT gets 502 and nothing is dialled.
func TestEgressProxyRefusesOtherAddresses(t *testing.T) {
	p, err := NewEgressProxy(filepath.Join(t.TempDir(), "egress.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = p.Close() }()
	if !strings.Contains(p.EgressSelectorConfig(), "udsName: "+p.Path) {
		t.Errorf("egress selector config does not name the socket:\n%s", p.EgressSelectorConfig())
	}
	var d net.Dialer
	for _, target := range []string{"10.244.0.1:10250", "10.0.0.7:8080", "not-an-address"} {
		c, err := d.DialContext(t.Context(), "unix", p.Path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusBadRequest {
			t.Errorf("CONNECT %s without a node: %s; want it refused", target, resp.Status)
		}
	}
}
