package main_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// memoryTimeout bounds the wait for the memory of a large request to be given back;
// it ends as soon as it is. Without the trim the heap would be collected only by the
// runtime's forced collection, two minutes later.
const memoryTimeout = 30 * time.Second

// TestMemoryGivenBack: after a 10 MB request, on the socket and on /v1/, both
// processes give the memory back: their anonymous resident memory returns within
// 5 MiB of what it was before.
func TestMemoryGivenBack(t *testing.T) {
	s := startServer(t, "1.3", serverOpts{})
	_, st := s.status()
	procs := map[string]int{"supervisor": s.cmd.Process.Pid, "worker": int(st["worker_pid"].(float64))}
	big := strings.Repeat("word ", 2<<20) // 10 MiB
	for _, send := range []struct {
		transport string
		do        func()
	}{
		{"socket", func() {
			sendSocketLine(t, s, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"input":{"prompt_input":%q}}}`, big))
		}},
		{"/v1/", func() {
			body := fmt.Sprintf(`{"model":"model","max_tokens":4,"messages":[{"role":"user","content":%q}]}`, big)
			resp, err := http.Post(s.base+"/v1/chat/completions", "application/json", strings.NewReader(body)) //nolint:noctx // bounded by the server's answer
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}},
	} {
		before := map[string]int64{}
		for name, pid := range procs {
			before[name] = anonRSS(t, pid)
		}
		send.do()
		for name, pid := range procs {
			var now int64
			s.eventually(fmt.Sprintf("the %s to give back a 10 MB request's memory (%s)", name, send.transport), memoryTimeout, func() bool {
				now = anonRSS(t, pid)
				return now < before[name]+5<<20
			}, func() string { return fmt.Sprintf("anonymous RSS %d KiB, %d KiB before", now>>10, before[name]>>10) })
		}
	}
}

// sendSocketLine sends one line on a new socket connection and reads the answer.
func sendSocketLine(t *testing.T, s *server, line string) {
	t.Helper()
	var d net.Dialer
	nc, err := d.DialContext(context.Background(), "unix", s.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = nc.Close() }()
	if _, err := io.WriteString(nc, line+"\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(nc).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
}

// anonRSS is a process's anonymous resident memory (RssAnon), in bytes.
func anonRSS(t *testing.T, pid int) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no RssAnon")
	return 0
}
