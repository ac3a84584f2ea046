//go:build e2e

// Package demo_test checks that `make demo-down` leaves nothing of the demo running, in
// the hardest case: the demo's background process was killed (SIGKILL: no chance to stop
// what it started), so the control plane kwokctl started, which is detached, is still
// running. `demo up --walk=false` starts the cluster, the test kills the background
// process, and `demo down` must stop every process of the demo, free its ports and
// remove its state. Run it with `make e2e` (root; builds everything it needs).
package demo_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/footprint"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

// Named timeouts for a loaded 2-core machine.
const (
	upTimeout   = 3 * time.Minute
	downTimeout = 3 * time.Minute
	exitTimeout = 30 * time.Second
)

var repoRoot = filepath.Join("..", "..", "..")

// ready is what the demo records in its state folder once the cluster serves.
type ready struct {
	WorkDir    string `json:"workDir"`
	Kubeconfig string `json:"kubeconfig"`
	NodePID    int    `json:"nodePID"`
}

func TestDownAfterACrash(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the demo needs root (private mount namespaces for the kubelet and the manager)")
	}
	k8sBin := makevars.Path(t, "E2E_K8S_BIN_DIR", "e2e")
	state := t.TempDir()
	chart, err := filepath.Abs(filepath.Join(repoRoot, "charts", "rkllm-operator"))
	if err != nil {
		t.Fatal(err)
	}
	demo := makevars.Path(t, "E2E_DEMO", "e2e")
	flags := []string{"--state", state, "--k8s-bin-dir", k8sBin, "--kwokctl", makevars.Path(t, "E2E_KWOKCTL", "e2e"), "--kwok", makevars.Path(t, "E2E_KWOK", "e2e"),
		"--helm", makevars.Path(t, "E2E_HELM", "e2e"), "--device-plugin", makevars.Path(t, "E2E_DEVICE_PLUGIN", "e2e"), "--manager", makevars.Path(t, "E2E_MANAGER", "e2e"), "--gateway", makevars.Path(t, "E2E_GATEWAY", "e2e"),
		"--server", makevars.Path(t, "E2E_SERVER", "e2e"), "--sim-lib", makevars.Path(t, "E2E_SIM_LIB", "e2e"), "--chart", chart,
		"--process-cri", makevars.Path(t, "E2E_PROCESS_CRI", "e2e"), "--cni-bin-dir", makevars.Path(t, "E2E_CNI_BIN_DIR", "e2e")}
	runDemo := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, demo, append(args, flags...)...) //nolint:gosec // the binary from the Makefile
		cmd.Dir = state
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	hostAddrs, err := footprint.Addresses()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := runDemo(upTimeout, "up", "--walk=false")
	var r ready
	// Whatever happens below, nothing may outlive the test: demo down, then, should that
	// have failed too, SIGKILL for whatever still runs from the demo's folders.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		_, _ = runDemo(downTimeout, "down")
		dirs := []string{state}
		if r.WorkDir != "" {
			dirs = append(dirs, r.WorkDir)
		}
		for _, p := range edgecluster.Leftovers(dirs...) {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	})
	if err != nil {
		t.Fatalf("demo up: %v\n%s\ncluster log:\n%s", err, out, readFile(filepath.Join(state, "cluster.log")))
	}
	t.Logf("demo up in %s", time.Since(start).Round(time.Second))
	if err := json.Unmarshal([]byte(readFile(filepath.Join(state, "ready.json"))), &r); err != nil || r.WorkDir == "" {
		t.Fatalf("the demo's ready.json: %v (%+v)", err, r)
	}
	ports := demoPorts(t, r)
	// The checks below can fail: with the demo up, its processes run and its ports are taken.
	// The process check is the one `demo down` uses to find what to stop (Leftovers); the
	// ports are the check that does not depend on it.
	if left := edgecluster.Leftovers(r.WorkDir, state); len(left) == 0 {
		t.Fatalf("no process runs from %s while the demo is up: the leftover check sees nothing", r.WorkDir)
	}
	up := listeners(t, ports)
	if len(up) == 0 {
		t.Fatalf("nothing listens on the demo's ports %v while it is up: the port check sees nothing", ports)
	}
	// The processes that listen while the demo is up are the demo's: after demo down none
	// may listen any more (a port freed and taken since by another program is no leftover).
	demoPIDs := map[string]bool{}
	for _, holders := range up {
		for pid := range holders {
			demoPIDs[pid] = true
		}
	}

	// The real-kubelet node's namespaces (its own and its pods'), held by its runtime, the
	// kubelet and the pods.
	nss, err := footprint.Namespaces(r.NodePID)
	if err != nil {
		t.Fatal(err)
	}
	if held := footprint.Left(nss); len(nss) < 3 || len(held) < 3 {
		t.Fatalf("the node's namespaces %v, held by %v while the demo is up; want its own network, mount and PID namespaces, held by the runtime, the kubelet and pods: the check sees nothing", nss, held)
	}

	pid, err := strconv.Atoi(strings.TrimSpace(readFile(filepath.Join(state, "demo.pid"))))
	if err != nil {
		t.Fatalf("the demo's pid file: %v", err)
	}
	t.Logf("killing the demo's background process (pid %d) with SIGKILL", pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	t.Logf("after the crash, still running: %d processes of the demo, listening: %v", len(edgecluster.Leftovers(r.WorkDir, state)), listeners(t, ports))

	start = time.Now()
	out, err = runDemo(downTimeout, "down")
	if err != nil {
		t.Fatalf("demo down after a crash: %v\n%s", err, out)
	}
	t.Logf("demo down in %s:\n%s", time.Since(start).Round(time.Second), out)
	if left := edgecluster.Leftovers(r.WorkDir, state); len(left) > 0 {
		t.Errorf("after demo down, processes of the demo still run:\n%s", left)
	}
	for port, holders := range portsFreed(t, ports, demoPIDs) {
		for pid, cmd := range holders {
			if demoPIDs[pid] || pid == "0" {
				t.Errorf("after demo down, the demo's port %d is still listened on by pid %s (%s)", port, pid, cmd)
			} else {
				t.Logf("the demo's port %d, freed, is now listened on by another program: pid %s (%s)", port, pid, cmd)
			}
		}
	}
	if left := footprint.Left(nss, r.WorkDir, state); len(left) > 0 {
		t.Errorf("after demo down, the real-kubelet node left:\n%s", strings.Join(left, "\n"))
	}
	if added, err := footprint.NewAddresses(hostAddrs); err != nil || len(added) > 0 {
		t.Errorf("after demo down, the host has interfaces or addresses it had not before: %v %v", added, err)
	}
	for _, f := range []string{r.WorkDir, filepath.Join(state, "demo.pid"), filepath.Join(state, "ready.json"), filepath.Join(state, "workdir")} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after demo down, %s is still there (%v)", f, err)
		}
	}

	out, err = runDemo(downTimeout, "down")
	if err != nil || !strings.Contains(out, "No demo is running") {
		t.Errorf("a second demo down: %v\n%s\nwant success and \"No demo is running\"", err, out)
	}
}

// demoPorts are the demo's listening ports: the control plane's (kwokctl's configuration
// in the work folder, and the API server's in the kubeconfig). The node's own (the
// kubelet's, its pods') are in its network namespace, which ends with its processes.
func demoPorts(t *testing.T, r ready) []int {
	t.Helper()
	cfg := readFile(filepath.Join(r.WorkDir, "cp", "kwokctl.yaml"))
	seen := map[int]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+\w+Port: (\d+)$`).FindAllStringSubmatch(cfg, -1) {
		port, _ := strconv.Atoi(m[1]) // digits by the expression
		seen[port] = true
	}
	if len(seen) < 5 {
		t.Fatalf("found the control plane ports %v in %s/cp/kwokctl.yaml; want at least 5", seen, r.WorkDir)
	}
	kc, err := clientcmd.LoadFromFile(r.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			t.Fatal(err)
		}
		port, err := strconv.Atoi(u.Port())
		if err != nil {
			t.Fatalf("the kubeconfig's server %q has no port", c.Server)
		}
		seen[port] = true
	}
	ports := make([]int, 0, len(seen))
	for p := range seen {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	return ports
}

// listeners maps each of ports something listens on to the processes holding it.
func listeners(t *testing.T, ports []int) map[int]map[string]string {
	t.Helper()
	held, err := footprint.Listeners(ports)
	if err != nil {
		t.Fatal(err)
	}
	return held
}

// portsFreed returns who listens on ports once none is held by a process of the demo
// (demo) or by no process (pid "0": a socket its process let go of that the kernel has
// not finished closing), or after exitTimeout, for the caller to report.
func portsFreed(t *testing.T, ports []int, demo map[string]bool) map[int]map[string]string {
	t.Helper()
	deadline := time.Now().Add(exitTimeout)
	for {
		held := listeners(t, ports)
		demoHolds := false
		for _, holders := range held {
			for pid := range holders {
				demoHolds = demoHolds || demo[pid] || pid == "0"
			}
		}
		if !demoHolds || time.Now().After(deadline) {
			return held
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitGone waits until pid has exited (gone, or a zombie).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.NewTimer(exitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if footprint.Exited(pid) {
			return
		}
		select {
		case <-deadline.C:
			t.Fatalf("pid %d still runs %s after SIGKILL", pid, exitTimeout)
		case <-tick.C:
		}
	}
}

func readFile(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(data)
}
