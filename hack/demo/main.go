// Command demo is `make demo` and `make demo-down`: a simulated RK3588 edge cluster on
// this machine (test/e2e/edgecluster), the chart installed with helm, and a walk through
// what the operator does with a model: on the node with the real kubelet, the model's pod
// runs for real (its init container downloads the model from a local HTTP server and
// checks its sha256, rkllm-server loads it on the RKLLM simulator library and answers
// the kubelet's probes), and the demo streams tokens from it through its pod IP.
//
//	demo up   --state DIR ...   start the cluster in the background, run the walk-through, leave it running
//	demo down --state DIR       stop everything the demo started
//
// `up` starts `demo run` as a background process (its log is DIR/cluster.log) that owns
// the cluster and stops it on SIGTERM; `down` sends that and waits, then stops whatever
// still runs from the cluster's work folder (all of it, if the process crashed). Needs
// root.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
)

// paths are the binaries and files the demo uses (flags; the Makefile sets them).
type paths struct {
	state, k8sBin, kwokctl, kwok, helm, plugin, manager, gateway, server, simLib, chart, processCRI, cniBin string
}

func (p *paths) bind(fs *flag.FlagSet) {
	fs.StringVar(&p.state, "state", "bin/demo", "Folder for the demo's state: the pid, the cluster's log, the model file.")
	fs.StringVar(&p.k8sBin, "k8s-bin-dir", "bin/k8s/1.37.2", "Kubernetes binaries (hack/k8s-binaries.sh).")
	fs.StringVar(&p.kwokctl, "kwokctl", "bin/kwokctl-v0.8.0", "kwokctl binary (make kwokctl).")
	fs.StringVar(&p.kwok, "kwok", "bin/kwok-v0.8.0", "kwok binary (make kwok).")
	fs.StringVar(&p.helm, "helm", "bin/helm-v3.22.0", "helm binary (make helm).")
	fs.StringVar(&p.plugin, "device-plugin", "bin/rknpu-device-plugin", "rknpu-device-plugin binary (make device-plugin).")
	fs.StringVar(&p.manager, "manager", "bin/manager", "The operator's manager binary (make manager).")
	fs.StringVar(&p.gateway, "gateway", "bin/rkllm-gateway", "The model gateway's binary (make gateway).")
	fs.StringVar(&p.server, "server", "bin/rkllm-server", "rkllm-server binary (make build-server).")
	fs.StringVar(&p.simLib, "sim-lib", "bin/librkllmrt-sim-1.3.so", "The RKLLM simulator library (make sim).")
	fs.StringVar(&p.chart, "chart", "charts/rkllm-operator", "The chart.")
	fs.StringVar(&p.processCRI, "process-cri", "bin/process-cri", "The process runtime (make process-cri).")
	fs.StringVar(&p.cniBin, "cni-bin-dir", "bin/cni-plugins-v1.10.0", "The CNI plugins (make cni-plugins).")
}

// absolutize makes every path absolute: the background process and helm run elsewhere.
func (p *paths) absolutize() error {
	for _, s := range []*string{&p.state, &p.k8sBin, &p.kwokctl, &p.kwok, &p.helm, &p.plugin, &p.manager, &p.gateway, &p.server, &p.simLib, &p.chart, &p.processCRI, &p.cniBin} {
		abs, err := filepath.Abs(*s)
		if err != nil {
			return err
		}
		*s = abs
	}
	return nil
}

func (p *paths) args() []string {
	return []string{"--state", p.state, "--k8s-bin-dir", p.k8sBin, "--kwokctl", p.kwokctl, "--kwok", p.kwok, "--helm", p.helm,
		"--device-plugin", p.plugin, "--manager", p.manager, "--gateway", p.gateway, "--server", p.server, "--sim-lib", p.simLib, "--chart", p.chart,
		"--process-cri", p.processCRI, "--cni-bin-dir", p.cniBin}
}

// ready is what the background process tells `up` once the cluster serves.
type ready struct {
	WorkDir    string `json:"workDir"`
	Kubeconfig string `json:"kubeconfig"`
	// NodeNetNS is the real-kubelet node's network namespace, where its pod IPs are.
	NodeNetNS string `json:"nodeNetNS"`
	// NodePID is the node's runtime (its namespaces are the node's), in this machine's
	// PID namespace.
	NodePID int `json:"nodePID"`
	// ModelURL and ModelSHA256 are the simulator model file the local HTTP server (in the
	// node's network) serves, and its checksum.
	ModelURL    string `json:"modelURL"`
	ModelSHA256 string `json:"modelSHA256"`
	LogDir      string `json:"logDir"`
	// GatewayURL is the model gateway, forwarded from the node's network to this
	// machine's loopback by the background process.
	GatewayURL string `json:"gatewayURL"`
}

const usage = `usage: demo up|down [flags]   (make demo, make demo-down)`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	var p paths
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	p.bind(fs)
	walk := true
	if os.Args[1] == "up" {
		fs.BoolVar(&walk, "walk", walk, "Walk through the scenario once the cluster is ready; false returns as soon as it is ready (scripts, the e2e test).")
	}
	_ = fs.Parse(os.Args[2:])
	if err := p.absolutize(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(p, walk)
	case "run":
		err = run(p)
	case "down":
		err = down(p)
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func pidFile(p paths) string    { return filepath.Join(p.state, "demo.pid") }
func readyFile(p paths) string  { return filepath.Join(p.state, "ready.json") }
func clusterLog(p paths) string { return filepath.Join(p.state, "cluster.log") }

// workDirFile holds the path of the background process's work folder, written before
// anything starts there, so down finds what a crashed demo left.
func workDirFile(p paths) string { return filepath.Join(p.state, "workdir") }

// workDirPrefix begins the name of every work folder run creates.
const workDirPrefix = "rkllm-demo-"

// running returns the pid of a demo that is still running, or 0.
func running(p paths) int {
	data, err := os.ReadFile(pidFile(p))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return 0
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || !strings.Contains(string(cmdline), p.state) {
		return 0 // gone, or the pid was reused
	}
	return pid
}

// up starts the background cluster, waits for it while showing its progress, and walks
// through the scenario.
func up(p paths, walk bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root: the real-kubelet node and the manager run in private mount namespaces")
	}
	if pid := running(p); pid != 0 {
		return fmt.Errorf("a demo is already running (pid %d); stop it with `make demo-down`", pid)
	}
	if work := workDir(p); work != "" {
		return fmt.Errorf("a previous demo in %s was not stopped (work folder %s); run `make demo-down` first", p.state, work)
	}
	for _, f := range []string{p.k8sBin + "/kubelet", p.kwokctl, p.kwok, p.helm, p.plugin, p.manager, p.server, p.simLib, p.processCRI, p.cniBin} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w (make demo builds everything)", err)
		}
	}
	if err := os.MkdirAll(p.state, 0o750); err != nil {
		return err
	}
	_ = os.Remove(readyFile(p))
	logFile, err := os.Create(clusterLog(p))
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	say("Starting a simulated RK3588 edge cluster in the background (its log: %s).", clusterLog(p))
	say("No container engine is needed: the real kubelet's node runs its pods as processes (hack/processcri).")
	cmd := exec.Command(self, append([]string{"run"}, p.args()...)...) //nolint:noctx,gosec // this program itself; it outlives this command on purpose
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // survives this terminal
	if err := cmd.Start(); err != nil {
		return err
	}
	_ = logFile.Close()
	if err := os.WriteFile(pidFile(p), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	r, err := waitReady(p, exited)
	if err != nil {
		return fmt.Errorf("%w\nthe cluster's log is %s; `make demo-down` cleans up", err, clusterLog(p))
	}
	if !walk {
		say("The cluster is ready (KUBECONFIG=%s); `make demo-down` stops it.", r.Kubeconfig)
		return nil
	}
	if err := walkThrough(p, r); err != nil {
		return fmt.Errorf("the walk-through stopped: %w\nthe cluster is still running (KUBECONFIG=%s); `make demo-down` stops it", err, r.Kubeconfig)
	}
	return nil
}

// waitReady prints the background process's log until it reports ready or exits.
func waitReady(p paths, exited <-chan error) (*ready, error) {
	const timeout = 5 * time.Minute
	deadline := time.After(timeout)
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	var offset int64
	show := func() {
		f, err := os.Open(clusterLog(p))
		if err != nil {
			return
		}
		defer func() { _ = f.Close() }()
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			return
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			offset += int64(len(sc.Bytes())) + 1
			fmt.Println("  " + sc.Text())
		}
	}
	for {
		show()
		if data, err := os.ReadFile(readyFile(p)); err == nil {
			var r ready
			if err := json.Unmarshal(data, &r); err != nil {
				return nil, err
			}
			return &r, nil
		}
		select {
		case err := <-exited:
			show()
			return nil, fmt.Errorf("the cluster stopped while starting: %v", err)
		case <-deadline:
			return nil, fmt.Errorf("the cluster was not ready after %s", timeout)
		case <-ticker.C:
		}
	}
}

// down stops everything the demo started, whatever state it is in: the background
// process (SIGTERM, which stops what it started; SIGKILL after a while), then, with or
// without it (it may have crashed or been killed, leaving kwokctl's detached control
// plane behind), whatever still runs from the demo's work folder: kwokctl deletes the
// control plane and every leftover process is killed. It fails if anything survives.
func down(p paths) error {
	pid := running(p)
	if pid != 0 {
		say("Stopping the demo (pid %d): the manager, the device plugin, the kubelet and its pods, the control plane.", pid)
		stopRun(pid, p)
	}
	work := workDir(p)
	if work == "" {
		if pid == 0 {
			say("No demo is running here (no state in %s).", p.state)
		}
		return cleanState(p)
	}
	if pid == 0 {
		say("The demo's process is not running; stopping whatever it left running from %s.", work)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := edgecluster.Cleanup(ctx, p.kwokctl, work); err != nil {
		return fmt.Errorf("stopping what the demo left running: %w", err)
	}
	if err := os.RemoveAll(work); err != nil {
		return err
	}
	say("Stopped; nothing of the demo is running.")
	return cleanState(p)
}

// stopRun sends the background process SIGTERM and waits for it, with SIGKILL after a
// while (its children die with it; Cleanup takes care of the control plane).
func stopRun(pid int, p paths) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	const timeout = 90 * time.Second
	deadline := time.After(timeout)
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for running(p) != 0 {
		select {
		case <-deadline:
			say("It did not stop within %s; killing it.", timeout)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return
		case <-ticker.C:
		}
	}
}

// workDir is the work folder the background process recorded, or "".
func workDir(p paths) string {
	data, err := os.ReadFile(workDirFile(p))
	if err != nil {
		return ""
	}
	work := strings.TrimSpace(string(data))
	if !filepath.IsAbs(work) || !strings.HasPrefix(filepath.Base(work), workDirPrefix) {
		return "" // not what run writes: never clean up an arbitrary folder
	}
	return work
}

func cleanState(p paths) error {
	for _, f := range []string{pidFile(p), readyFile(p), workDirFile(p)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

// signalContext is cancelled on SIGTERM or Ctrl-C.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
}
