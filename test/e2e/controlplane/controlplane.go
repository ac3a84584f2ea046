// Package controlplane starts a local Kubernetes control plane (etcd, kube-apiserver,
// kube-scheduler and optionally kube-controller-manager) from binaries with kwokctl's
// binary runtime, on loopback ports chosen free, in a private working folder, and stops
// every process it started. It backs the real-kubelet e2e test and the demo.
package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"
)

// defaultName is the cluster's name when Options.Name is empty.
const defaultName = "rkllm"

// Options configures a control plane.
type Options struct {
	// Kwokctl is the kwokctl binary (make kwokctl builds bin/kwokctl-<version>).
	Kwokctl string
	// BinDir holds kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and
	// etcd (hack/k8s-binaries.sh builds them into bin/k8s/<version>).
	BinDir string
	// WorkDir is a private folder for kwokctl's state, certificates, logs and etcd data;
	// it must be new or empty, and is left in place for inspection.
	WorkDir string
	// Name is the cluster's name (default defaultName, "rkllm").
	Name string
	// ControllerManager also runs kube-controller-manager (Deployments, ServiceAccounts,
	// garbage collection); tests that only schedule bare pods can leave it out.
	ControllerManager bool
	// Kwok, when set, is the kwok binary (make kwok): kwokctl also runs the kwok
	// controller, which simulates the nodes annotated kwok.x-k8s.io/node=fake and their
	// pods (kwokctl's default stages) and leaves every other node alone.
	Kwok string
	// Log receives kwokctl's own output (nil discards it).
	Log io.Writer
	// EgressSelectorConfig, when set, is kube-apiserver's egress selector configuration
	// (written into the working folder): the real-kubelet node's network is reached
	// through its proxy (kubeletnode.EgressProxy).
	EgressSelectorConfig string
}

// ControlPlane is a running control plane.
type ControlPlane struct {
	// Kubeconfig is the admin kubeconfig's path.
	Kubeconfig string
	// Server is the kube-apiserver's URL.
	Server string

	opts       Options
	clusterDir string
}

// Start creates and starts the cluster and returns when kube-apiserver serves. On error
// it stops whatever it had started.
func Start(ctx context.Context, opts Options) (*ControlPlane, error) {
	if opts.Name == "" {
		opts.Name = defaultName
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	bins := []string{opts.Kwokctl, filepath.Join(opts.BinDir, "kube-apiserver"), filepath.Join(opts.BinDir, "etcd"),
		filepath.Join(opts.BinDir, "kube-scheduler"), filepath.Join(opts.BinDir, "kubectl")}
	if opts.ControllerManager {
		bins = append(bins, filepath.Join(opts.BinDir, "kube-controller-manager"))
	}
	if opts.Kwok != "" {
		bins = append(bins, opts.Kwok)
	}
	for _, bin := range bins {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("control plane binary missing: %w (run make kwokctl and hack/k8s-binaries.sh)", err)
		}
	}
	if err := os.MkdirAll(opts.WorkDir, 0o750); err != nil {
		return nil, fmt.Errorf("creating %s: %w", opts.WorkDir, err)
	}
	ports, err := freePorts(6)
	if err != nil {
		return nil, err
	}
	egress := ""
	if opts.EgressSelectorConfig != "" {
		egress = filepath.Join(opts.WorkDir, "egress-selector.yaml")
		if err := os.WriteFile(egress, []byte(opts.EgressSelectorConfig), 0o600); err != nil {
			return nil, err
		}
	}
	config := filepath.Join(opts.WorkDir, "kwokctl.yaml")
	if err := writeConfig(config, opts, ports, egress); err != nil {
		return nil, err
	}
	cp := &ControlPlane{
		opts:       opts,
		clusterDir: filepath.Join(opts.WorkDir, "clusters", opts.Name),
		Server:     "https://127.0.0.1:" + strconv.Itoa(ports[0]),
	}
	cp.Kubeconfig = filepath.Join(cp.clusterDir, "kubeconfig.yaml")

	// --kubeconfig "" keeps kwokctl away from the user's ~/.kube/config.
	if err := cp.kwokctl(ctx, "--config", config, "create", "cluster", "--name", opts.Name, "--kubeconfig", "", "--wait", "0s"); err != nil {
		stopErr := cp.Stop(context.WithoutCancel(ctx))
		return nil, errors.Join(fmt.Errorf("starting the control plane: %w (logs in %s)", err, filepath.Join(cp.clusterDir, "logs")), stopErr)
	}
	if _, err := os.Stat(cp.Kubeconfig); err != nil {
		stopErr := cp.Stop(context.WithoutCancel(ctx))
		return nil, errors.Join(fmt.Errorf("kwokctl wrote no kubeconfig: %w", err), stopErr)
	}
	return cp, nil
}

// Leftover is the control plane that a Start with this kwokctl, working folder and name
// left behind when its owner died without calling Stop (kwokctl's processes are detached
// and outlive it): its Stop deletes the cluster as if it had started it.
func Leftover(kwokctl, workDir, name string) *ControlPlane {
	if name == "" {
		name = defaultName
	}
	return &ControlPlane{
		opts:       Options{Kwokctl: kwokctl, WorkDir: workDir, Name: name, Log: io.Discard},
		clusterDir: filepath.Join(workDir, "clusters", name),
	}
}

// Stop deletes the cluster (stopping its processes) and then kills any process still
// running from its pid files, so nothing outlives the test even if kwokctl fails. It
// leaves the working folder's logs.
func (cp *ControlPlane) Stop(ctx context.Context) error {
	// Keep the logs for a failed test: kwokctl removes the cluster folder.
	logs := filepath.Join(cp.clusterDir, "logs")
	kept := filepath.Join(cp.opts.WorkDir, "logs")
	_ = os.RemoveAll(kept)
	_ = copyDir(logs, kept)

	// The pid files go with the cluster folder, so they are read first.
	started := readPids(filepath.Join(cp.clusterDir, "pids"))
	var errs []error
	if _, err := os.Stat(cp.clusterDir); err == nil {
		// delete refuses an empty --kubeconfig; it only drops its context from this file.
		unused := filepath.Join(cp.opts.WorkDir, "kubeconfig.unused")
		if err := cp.kwokctl(ctx, "delete", "cluster", "--name", cp.opts.Name, "--kubeconfig", unused); err != nil {
			errs = append(errs, fmt.Errorf("kwokctl delete cluster: %w", err))
		}
	}
	errs = append(errs, killLeftovers(started, cp.clusterDir))
	return errors.Join(errs...)
}

// kwokctl runs kwokctl with the private working folder.
func (cp *ControlPlane) kwokctl(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cp.opts.Kwokctl, args...) //nolint:gosec // the binary is the caller's choice
	cmd.Env = append(os.Environ(), "KWOK_WORKDIR="+cp.opts.WorkDir)
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(cp.opts.Log, &out)
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kwokctl %s: %w: %s", strings.Join(args, " "), err, lastLines(out.String(), 20))
	}
	return nil
}

var configTemplate = template.Must(template.New("kwokctl").Parse(`apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeApiserverPort: {{index .Ports 0}}
  etcdPort: {{index .Ports 1}}
  etcdPeerPort: {{index .Ports 2}}
  kubeSchedulerPort: {{index .Ports 3}}
  kubeControllerManagerPort: {{index .Ports 4}}
  kwokControllerPort: {{index .Ports 5}}
  kubeApiserverBinary: {{.BinDir}}/kube-apiserver
  kubeControllerManagerBinary: {{.BinDir}}/kube-controller-manager
  kubeSchedulerBinary: {{.BinDir}}/kube-scheduler
  kubectlBinary: {{.BinDir}}/kubectl
  etcdBinary: {{.BinDir}}/etcd
  cacheDir: {{.WorkDir}}/cache
  quietPull: true
{{- if .Kwok}}
  kwokControllerBinary: {{.Kwok}}
{{- end}}
{{- if or (not .Kwok) (not .ControllerManager)}}
  disable:
{{- if not .Kwok}}
  - kwok-controller
{{- end}}
{{- if not .ControllerManager}}
  - kube-controller-manager
{{- end}}
{{- end}}
{{- if or .Kwok .Egress}}
componentsPatches:
{{- end}}
{{- if .Egress}}
- name: kube-apiserver
  extraArgs:
  - key: egress-selector-config-file
    value: {{.Egress}}
{{- end}}
{{- if .Kwok}}
# kwokctl's binary runtime makes kwok manage every node; a real kubelet's node must be
# left to its kubelet.
- name: kwok-controller
  extraArgs:
  - key: manage-all-nodes
    value: "false"
    override: true
  - key: manage-nodes-with-annotation-selector
    value: kwok.x-k8s.io/node=fake
{{- end}}
`))

func writeConfig(path string, opts Options, ports []int, egress string) error {
	var b bytes.Buffer
	if err := configTemplate.Execute(&b, struct {
		Options
		Ports  []int
		Egress string
	}{opts, ports, egress}); err != nil {
		return fmt.Errorf("rendering the kwokctl config: %w", err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// freePorts returns n distinct loopback ports that were free a moment ago. Holding all
// listeners until every port is picked keeps them distinct.
func freePorts(n int) ([]int, error) {
	var lc net.ListenConfig
	ports := make([]int, 0, n)
	for range n {
		l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer func() { _ = l.Close() }()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// readPids reads kwokctl's pid files: component name to pid.
func readPids(dir string) map[string]int {
	pids := map[string]int{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return pids // nothing was started
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 1 {
			pids[strings.TrimSuffix(e.Name(), ".pid")] = pid
		}
	}
	return pids
}

// killLeftovers kills the processes that are still running and whose command line
// still mentions marker (the cluster's folder), so a recycled pid is never hit.
func killLeftovers(pids map[string]int, marker string) error {
	var errs []error
	for name, pid := range pids {
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(marker)) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("killing leftover %s (pid %d): %w", name, pid, err))
		}
	}
	return errors.Join(errs...)
}

func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o750); err != nil {
		return err
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o600); err != nil { //nolint:gosec // names come from ReadDir
			return err
		}
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
