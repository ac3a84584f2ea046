package main_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rkllm-operator/rkllm-operator/server/httpapi"
)

// TestProbesWithEverySlotTaken (issue 12.5): idle clients that hold every connection
// slot, HTTP keep-alive and socket alike, do not starve the probes: /livez, /readyz,
// /healthz and /metrics answer on the probe listener, again and again.
func TestProbesWithEverySlotTaken(t *testing.T) {
	const slots = 6
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-connections": slots}})
	addr := strings.TrimPrefix(s.base, "http://")
	for i := range slots {
		if i%2 == 0 {
			// A keep-alive connection that made one request and stays idle.
			kc, err := dialNet("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = kc.Close() })
			_ = kc.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := io.WriteString(kc, httpRequest(req("rkllm.is_running", ""))); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(kc), nil)
			if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
				t.Fatalf("keep-alive connection %d: %v %v", i, resp, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			continue
		}
		s.dialAccepted()
	}
	s.eventually("every slot taken", waitTimeout, func() bool {
		return s.metric(`rkllm_connections_open{transport="http"}`)+s.metric(`rkllm_connections_open{transport="unix"}`) == slots
	})
	// A client connection is refused now...
	extra := s.rawDial()
	_ = extra.nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if line, err := extra.br.ReadString('\n'); err != nil || !strings.Contains(line, "max_connections") {
		t.Fatalf("a client connection over the cap read %q, %v", line, err)
	}
	// ...and every probe answers, more times than the probe listener holds connections.
	for i := range 40 {
		for _, path := range []string{"/livez", "/readyz", "/healthz", "/metrics"} {
			resp, body := s.get(path)
			if resp.StatusCode != http.StatusOK || body == "" {
				t.Fatalf("probe %d of %s with every client slot taken: %d %q", i, path, resp.StatusCode, body)
			}
		}
	}
}

// TestProbesWithTheProbeListenerHeld (issue 12.5): clients that reach the probe
// listener itself and hold more connections than it keeps, each sending half a request
// head, do not starve the probes either: a new connection takes the place of the one
// that has waited longest, so every probe answers, again and again.
func TestProbesWithTheProbeListenerHeld(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	addr := strings.TrimPrefix(s.probes, "http://")
	var held []net.Conn
	for i := range 2 * httpapi.ProbeMaxConnections {
		nc, err := dialNet("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { _ = nc.Close() })
		if _, err := io.WriteString(nc, "GET /livez HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		held = append(held, nc)
	}
	for i := range 10 {
		for _, path := range []string{"/livez", "/readyz", "/healthz", "/metrics"} {
			resp, body := s.get(path)
			if resp.StatusCode != http.StatusOK || body == "" {
				t.Fatalf("probe %d of %s with the probe listener held: %d %q", i, path, resp.StatusCode, body)
			}
		}
	}
	// The first held connection made room long ago: the server has closed it (a reset
	// when the server closed it with the half request unread, which the kernel answers so).
	_ = held[0].SetReadDeadline(time.Now().Add(waitTimeout))
	if n, err := held[0].Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the longest-waiting connection: read %d bytes, %v; want it closed", n, err)
	}
}

// TestConnectionFloodKeepsTheReserve (issue 12.6): a flood of connections that send
// nothing (socket) or half a request head (HTTP), under a low RLIMIT_NOFILE, is refused at once without holding descriptors,
// so the reserve holds: the probes answer and a killed worker is restarted (a new
// socketpair) while the flood is still connected.
func TestConnectionFloodKeepsTheReserve(t *testing.T) {
	const limit, perTransport = 128, 200
	s := startServer(t, "1.3", serverOpts{config: map[string]any{"max-connections": 0},
		wrap: []string{"sh", "-c", "ulimit -n " + strconv.Itoa(limit) + ` && exec "$@"`, "sh"}})
	addr := strings.TrimPrefix(s.base, "http://")
	for i := range perTransport {
		for _, network := range []string{"unix", "tcp"} {
			target := s.socket
			if network == "tcp" {
				target = addr
			}
			nc, err := dialNet(network, target)
			if err != nil {
				t.Fatalf("connection %d over %s: %v", i, network, err)
			}
			t.Cleanup(func() { _ = nc.Close() })
			// A TCP connection that sends nothing stays in the kernel until it does
			// (TCP_DEFER_ACCEPT): these begin a head and never finish it.
			if network == "tcp" {
				_, _ = io.WriteString(nc, "POST /rpc HTTP/1.1\r\nHost: x\r\n")
			}
		}
	}
	// Every connection has been taken or refused; the refused ones are closed already.
	s.eventually("every connection taken or refused", waitTimeout, func() bool {
		n := 0.0
		for _, tr := range []string{"unix", "http"} {
			n += s.metric(`rkllm_connections_open{transport="` + tr + `"}`)
			n += s.metric(`rkllm_connections_rejected_total{reason="file_descriptors",transport="` + tr + `"}`)
		}
		return n == 2*perTransport
	})
	if n := s.metric(`rkllm_connections_rejected_total{reason="file_descriptors",transport="unix"}`); n == 0 {
		t.Fatalf("no connection refused for descriptors: the flood did not reach the reserve")
	}
	if open := openDescriptors(t, s.cmd.Process.Pid); open > limit-32 {
		t.Errorf("the server holds %d descriptors of %d with the flood refused: refused connections hold theirs", open, limit)
	}
	// The worker dies: its replacement needs a socketpair and pipes from the reserve.
	_, st := s.status()
	pid := int(st["worker_pid"].(float64))
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.eventually("a new worker, ready", waitTimeout, func() bool {
		code, st := s.status()
		return code == http.StatusOK && st["worker_restarts"] == 1.0
	}, func() string { _, st := s.status(); return fmt.Sprint(st) })
	for _, path := range []string{"/livez", "/healthz", "/metrics"} {
		if resp, _ := s.get(path); resp.StatusCode != http.StatusOK {
			t.Errorf("%s under the flood: %d", path, resp.StatusCode)
		}
	}
}

// openDescriptors counts the descriptors process pid holds.
func openDescriptors(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}
