/*
Copyright 2026 The rkllm-operator Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Package localcluster runs a throw-away Kubernetes control plane (kube-apiserver and
// etcd, the binaries hack/k8s-binaries.sh builds) with the RKLLMModel CRD installed, and
// the operator's manager binary against it. `make demo` and the operator benchmark use it.
// It has no controller-manager, scheduler or kubelet: Deployments get no pods.
package localcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Options say where the pieces are.
type Options struct {
	// RepoRoot is the repository's top folder (config/crd/bases is under it).
	RepoRoot string
	// BinaryDir holds kube-apiserver and etcd; KUBEBUILDER_ASSETS when empty.
	BinaryDir string
	// WorkDir receives the kubeconfig and logs; a new temporary folder when empty
	// (removed by Stop).
	WorkDir string
}

// Cluster is a running control plane.
type Cluster struct {
	env        *envtest.Environment
	Config     *rest.Config
	Client     client.Client
	Kubeconfig string
	WorkDir    string
	ownWorkDir bool
}

// Start starts kube-apiserver and etcd, installs the CRD and writes an admin kubeconfig.
func Start(o Options) (*Cluster, error) {
	bin := o.BinaryDir
	if bin == "" {
		bin = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if bin == "" {
		return nil, errors.New("no Kubernetes binaries: run `make envtest` and set KUBEBUILDER_ASSETS (the Makefile does)")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil { //nolint:gosec // a folder the developer names
			return nil, fmt.Errorf("%s is missing in %s: run `make envtest`", b, bin)
		}
	}
	c := &Cluster{WorkDir: o.WorkDir}
	if c.WorkDir == "" {
		dir, err := os.MkdirTemp("", "rkllm-localcluster-")
		if err != nil {
			return nil, fmt.Errorf("creating a work folder: %w", err)
		}
		c.WorkDir, c.ownWorkDir = dir, true
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := inferencev1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c.env = &envtest.Environment{
		Scheme:                   scheme,
		CRDDirectoryPaths:        []string{filepath.Join(o.RepoRoot, "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		BinaryAssetsDirectory:    bin,
		ControlPlaneStartTimeout: 2 * time.Minute,
	}
	// envtest's default service range (a /24) runs out of ClusterIPs at about 250
	// Services; the benchmark makes 500.
	c.env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	cfg, err := c.env.Start()
	if err != nil {
		c.removeWorkDir()
		return nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	c.Config = cfg
	user, err := c.env.AddUser(envtest.User{Name: "local-admin", Groups: []string{"system:masters"}}, nil)
	if err == nil {
		var kc []byte
		if kc, err = user.KubeConfig(); err == nil {
			c.Kubeconfig = filepath.Join(c.WorkDir, "kubeconfig")
			err = os.WriteFile(c.Kubeconfig, kc, 0o600)
		}
	}
	if err == nil {
		c.Client, err = client.New(cfg, client.Options{Scheme: scheme})
	}
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("preparing access to the control plane: %w", err)
	}
	return c, nil
}

// Server is the API server's URL.
func (c *Cluster) Server() string { return c.Config.Host }

// Stop stops the control plane and removes the work folder Start made.
func (c *Cluster) Stop() {
	if c.env != nil {
		_ = c.env.Stop()
	}
	c.removeWorkDir()
}

func (c *Cluster) removeWorkDir() {
	if c.ownWorkDir {
		_ = os.RemoveAll(c.WorkDir)
	}
}

// Process is a manager binary running against the cluster.
type Process struct {
	cmd  *exec.Cmd
	done chan error
	// Log is the file holding the manager's output.
	Log string
}

// StartManager runs the manager binary with the cluster's kubeconfig, its output in a
// log file in the work folder. Metrics and probes are off: they would need fixed ports.
// Cancelling ctx stops the manager as Stop does.
func (c *Cluster) StartManager(ctx context.Context, binary string, extraArgs ...string) (*Process, error) {
	logPath := filepath.Join(c.WorkDir, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating the manager log: %w", err)
	}
	args := append([]string{"--kubeconfig=" + c.Kubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=0"}, extraArgs...)
	cmd := exec.CommandContext(ctx, binary, args...) //nolint:gosec // the binary and flags come from the developer
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C in the terminal reaches only the caller, which
	// then stops the manager once (a second signal makes a manager exit at once).
	// Pdeathsig: the manager goes down with the caller, even on a crash.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	p := &Process{cmd: cmd, done: make(chan error, 1), Log: logPath}
	go func() {
		p.done <- cmd.Wait()
		_ = logFile.Close()
	}()
	return p, nil
}

// Exited yields the exit error once the process ends.
func (p *Process) Exited() <-chan error { return p.done }

// PeakRSS is the process's peak resident memory so far (VmHWM), in bytes.
func (p *Process) PeakRSS() (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("reading the manager's memory: %w", err)
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			fields := strings.Fields(rest)
			kb, err := strconv.ParseInt(fields[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing VmHWM %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc/PID/status")
}

// Stop asks the manager to stop (SIGTERM) and waits up to timeout before killing it.
func (p *Process) Stop(ctx context.Context, timeout time.Duration) error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping the manager: %w", err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-p.done:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("the manager exited with %v (see %s)", exit, p.Log)
		}
		return err
	case <-t.C:
	case <-ctx.Done():
	}
	_ = p.cmd.Process.Kill()
	killed := <-p.done
	return fmt.Errorf("the manager did not stop within %s and was killed (%v)", timeout, killed)
}
