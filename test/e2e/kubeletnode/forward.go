package kubeletnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"
)

// dialTimeout bounds a forwarded connection's dial.
const dialTimeout = 30 * time.Second

// Forwarder accepts connections on a listener and joins each to a new connection from
// dial, until Close.
type Forwarder struct {
	l    net.Listener
	mu   sync.Mutex
	open map[net.Conn]struct{}
	wg   sync.WaitGroup
}

// Forward starts forwarding l's connections to what dial connects to.
func Forward(l net.Listener, dial func(context.Context) (net.Conn, error)) *Forwarder {
	f := &Forwarder{l: l, open: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
				defer cancel()
				up, err := dial(ctx)
				if err != nil {
					_ = c.Close()
					return
				}
				f.join(c, up)
			}()
		}
	}()
	return f
}

// join copies both ways until either side ends, then closes both.
func (f *Forwarder) join(a, b net.Conn) {
	if !f.track(a, b) {
		return
	}
	defer f.untrack(a, b)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

func (f *Forwarder) track(conns ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open == nil {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		f.open[c] = struct{}{}
	}
	return true
}

func (f *Forwarder) untrack(conns ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(f.open, c)
	}
}

// Close stops accepting, closes every forwarded connection and waits for them.
func (f *Forwarder) Close() {
	_ = f.l.Close()
	f.mu.Lock()
	for c := range f.open {
		_ = c.Close()
	}
	f.open = nil
	f.mu.Unlock()
	f.wg.Wait()
}

// EgressProxy is the API server's way into the node's network: an HTTP CONNECT proxy on
// a Unix socket, for kube-apiserver's egress selector ("cluster" traffic: kubectl logs
// and exec through the kubelet, the pod and service proxy). It dials the node's
// addresses from inside the node's network namespace and refuses every other address
// (the kwok nodes' and their pods' addresses exist nowhere).
type EgressProxy struct {
	// Path is the socket's path.
	Path string

	mu   sync.Mutex
	node *Node
	srv  *http.Server
	done chan struct{}
}

// NewEgressProxy serves the proxy on a Unix socket at path. It refuses every
// connection until SetNode.
func NewEgressProxy(path string) (*EgressProxy, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "unix", path)
	if err != nil {
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	p := &EgressProxy{Path: path, done: make(chan struct{})}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.connect), ReadHeaderTimeout: dialTimeout}
	go func() {
		defer close(p.done)
		_ = p.srv.Serve(l)
	}()
	return p, nil
}

// SetNode makes the proxy dial into node's network (nil: refuse again).
func (p *EgressProxy) SetNode(n *Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.node = n
}

func (p *EgressProxy) connect(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "only CONNECT", http.StatusMethodNotAllowed)
		return
	}
	p.mu.Lock()
	n := p.node
	p.mu.Unlock()
	target := r.Host
	// The API server may dial the node by its Hostname address (its name), which only
	// this proxy can resolve.
	if host, port, err := net.SplitHostPort(target); err == nil && n != nil && host == n.Name {
		target = net.JoinHostPort(n.IP.String(), port)
	}
	ap, err := netip.ParseAddrPort(target)
	switch {
	case err != nil:
		http.Error(w, "CONNECT target must be an address and a port: "+r.Host, http.StatusBadRequest)
		return
	case n == nil || n.Runtime == nil || !n.InNetwork(ap.Addr()):
		http.Error(w, r.Host+" is not an address of the simulated node's network", http.StatusBadGateway)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), dialTimeout)
	defer cancel()
	up, err := n.DialContext(ctx, "tcp", target)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		_ = up.Close()
		http.Error(w, "cannot hijack", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		_ = up.Close()
		return
	}
	if _, err := conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		_ = conn.Close()
		_ = up.Close()
		return
	}
	// Bytes the client sent after its request are in buf already.
	go joinBuffered(conn, buf, up)
}

// joinBuffered copies between the hijacked client (with what it already buffered) and
// the upstream connection until either ends.
func joinBuffered(client net.Conn, buf *bufio.ReadWriter, up net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(up, buf)
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(client, up)
		done <- struct{}{}
	}()
	<-done
	_ = client.Close()
	_ = up.Close()
	<-done
}

// Close stops the proxy and closes its connections' listener.
func (p *EgressProxy) Close() error {
	err := p.srv.Close()
	<-p.done
	return err
}

// EgressSelectorConfig is kube-apiserver's --egress-selector-config-file content that
// sends "cluster" traffic through the proxy.
func (p *EgressProxy) EgressSelectorConfig() string {
	return fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, p.Path)
}
