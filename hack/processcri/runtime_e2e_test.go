//go:build e2e

package processcri_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/logs"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/footprint"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

// Named timeouts for a loaded 2-core machine.
const (
	callTimeout = time.Minute
	exitTimeout = time.Minute
	stopTimeout = 30 * time.Second
)

const subnet = "10.244.7.0/24"

type env struct {
	t      *testing.T
	ctx    context.Context
	node   *processcri.Node
	rt     runtimeapi.RuntimeServiceClient
	img    runtimeapi.ImageServiceClient
	work   string
	images string
}

// start launches the runtime as a node, with an image map of the test's podserver and
// the host's shell.
func start(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the process runtime test needs root (namespaces, mounts)")
	}
	bin := makevars.Path(t, "E2E_PROCESS_CRI", "test-process-cri")
	cni := makevars.Path(t, "E2E_CNI_BIN_DIR", "test-process-cri")
	podserver := makevars.Path(t, "E2E_PODSERVER", "test-process-cri")
	e := &env{t: t, ctx: t.Context(), work: t.TempDir()}
	if err := os.MkdirAll(filepath.Join(e.work, "fake-dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.work, "fake-dev", "npu0"), []byte("a fake device node\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.images = filepath.Join(e.work, "images.yaml")
	imageMap := fmt.Sprintf(`images:
- image: test.local/podserver
  files: {/usr/local/bin/podserver: %s}
  entrypoint: [/usr/local/bin/podserver]
  env: [FROM_IMAGE=yes]
  user: "65532:65532"
- image: test.local/shell
  entrypoint: [/bin/sh, -c]
  env: [FROM_IMAGE=yes]
`, podserver)
	if err := os.WriteFile(e.images, []byte(imageMap), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(e.work, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(e.work, "runtime.log"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := processcri.Launch(e.ctx, processcri.LaunchOptions{
		Binary: bin, StateDir: state, Log: log,
		Args: []string{"--images", e.images, "--cni-bin-dir", cni, "--subnet", subnet, "--bridge", "rktest0",
			"--node-path", "/dev/fake=" + filepath.Join(e.work, "fake-dev")},
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, readFile(log.Name()))
	}
	e.node = node
	t.Cleanup(func() {
		if err := node.Stop(stopTimeout); err != nil {
			t.Error(err)
		}
		_ = log.Close()
		if t.Failed() {
			t.Logf("runtime log:\n%s", readFile(log.Name()))
		}
	})
	conn, err := grpc.NewClient("unix://"+node.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.rt = runtimeapi.NewRuntimeServiceClient(conn)
	e.img = runtimeapi.NewImageServiceClient(conn)
	return e
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func (e *env) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.ctx, callTimeout)
}

func (e *env) pull(ref string) string {
	e.t.Helper()
	ctx, cancel := e.call()
	defer cancel()
	resp, err := e.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		e.t.Fatalf("pulling %s: %v", ref, err)
	}
	return resp.GetImageRef()
}

// sandbox runs a pod sandbox named name and returns its id, config and IP.
func (e *env) sandbox(name string) (string, *runtimeapi.PodSandboxConfig, netip.Addr) {
	e.t.Helper()
	logDir := filepath.Join(e.work, "pods", name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name + "-uid"},
		Hostname:     name,
		LogDirectory: logDir,
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: []string{"default.svc.cluster.local"}},
	}
	ctx, cancel := e.call()
	defer cancel()
	resp, err := e.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		e.t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	st, err := e.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: resp.GetPodSandboxId()})
	if err != nil {
		e.t.Fatal(err)
	}
	ip, err := netip.ParseAddr(st.GetStatus().GetNetwork().GetIp())
	if err != nil || !netip.MustParsePrefix(subnet).Contains(ip) || st.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		e.t.Fatalf("sandbox %s: state %s, IP %q (%v); want READY with an IP in %s", name, st.GetStatus().GetState(), st.GetStatus().GetNetwork().GetIp(), err, subnet)
	}
	return resp.GetPodSandboxId(), cfg, ip
}

// run creates and starts a container; startErr is the StartContainer error.
func (e *env) run(sandboxID string, sandbox *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) (string, error) {
	e.t.Helper()
	ctx, cancel := e.call()
	defer cancel()
	if cfg.LogPath == "" {
		cfg.LogPath = cfg.GetMetadata().GetName() + ".log"
	}
	resp, err := e.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandboxID, Config: cfg, SandboxConfig: sandbox})
	if err != nil {
		e.t.Fatalf("CreateContainer %s: %v", cfg.GetMetadata().GetName(), err)
	}
	_, err = e.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: resp.GetContainerId()})
	return resp.GetContainerId(), err
}

func (e *env) status(id string) *runtimeapi.ContainerStatus {
	e.t.Helper()
	ctx, cancel := e.call()
	defer cancel()
	st, err := e.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		e.t.Fatal(err)
	}
	return st.GetStatus()
}

// waitExited waits until the container has exited and returns its status.
func (e *env) waitExited(id string) *runtimeapi.ContainerStatus {
	e.t.Helper()
	deadline := time.Now().Add(exitTimeout)
	for {
		st := e.status(id)
		if st.GetState() == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s still %s after %s; log:\n%s", st.GetMetadata().GetName(), st.GetState(), exitTimeout, e.logOf(st))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logOf reads a container's log with the kubelet's reader.
func (e *env) logOf(st *runtimeapi.ContainerStatus) string {
	var out bytes.Buffer
	if err := logs.ReadLogs(e.ctx, st.GetLogPath(), "", &logs.LogOptions{}, nil, &out, &out); err != nil {
		return "(" + err.Error() + ")"
	}
	return out.String()
}

func (e *env) httpGet(addr string) (string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: e.node.DialContext}, Timeout: callTimeout}
	req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func kv(pairs ...string) []*runtimeapi.KeyValue {
	var out []*runtimeapi.KeyValue
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, &runtimeapi.KeyValue{Key: pairs[i], Value: []byte(pairs[i+1])})
	}
	return out
}

func TestImages(t *testing.T) {
	e := start(t)
	ctx, cancel := e.call()
	defer cancel()
	_, err := e.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "test.local/missing:1"}})
	if err == nil || !strings.Contains(err.Error(), e.images) || !strings.Contains(err.Error(), "test.local/missing:1") {
		t.Errorf("pulling an unmapped image: %v; want an error naming the image and the map %s", err, e.images)
	}
	st, err := e.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "test.local/podserver:v1"}})
	if err != nil || st.GetImage() != nil {
		t.Errorf("ImageStatus before the pull: %v, %v; want no image, as a registry-backed runtime", st.GetImage(), err)
	}
	ref := e.pull("test.local/podserver:v1")
	st, err = e.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "test.local/podserver:v1"}})
	if err != nil || st.GetImage().GetId() != ref || st.GetImage().GetSize() < 1000 || st.GetImage().GetUid().GetValue() != 65532 {
		t.Errorf("ImageStatus after the pull: %v, %v; want id %s, the binary's size and uid 65532", st.GetImage(), err, ref)
	}
	byID, err := e.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil || byID.GetImage().GetId() != ref {
		t.Errorf("ImageStatus by the image's id: %v, %v", byID.GetImage(), err)
	}
}

// TestTwoPodsOnOnePort: each sandbox has its own network namespace and address, so two
// servers both listen on :8080, and each answers at its pod IP.
func TestTwoPodsOnOnePort(t *testing.T) {
	e := start(t)
	ref := e.pull("test.local/podserver:v1")
	ips := map[string]netip.Addr{}
	for _, name := range []string{"pod-a", "pod-b"} {
		id, cfg, ip := e.sandbox(name)
		ips[name] = ip
		if _, err := e.run(id, cfg, &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "server"},
			Image:    &runtimeapi.ImageSpec{Image: ref, UserSpecifiedImage: "test.local/podserver:v1"},
		}); err != nil {
			t.Fatal(err)
		}
	}
	if ips["pod-a"] == ips["pod-b"] {
		t.Fatalf("both sandboxes got %s", ips["pod-a"])
	}
	for name, ip := range ips {
		var body string
		var err error
		deadline := time.Now().Add(exitTimeout)
		for {
			if body, err = e.httpGet(netip.AddrPortFrom(ip, 8080).String()); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || body != "hello from "+name+"\n" {
			t.Errorf("GET http://%s:8080/ = %q, %v; want %q", ip, body, err, "hello from "+name+"\n")
		}
	}
	// The node's own address is on its bridge, in its namespace: not on the host.
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && netip.MustParsePrefix(subnet).Contains(p.Addr()) {
				t.Errorf("the host has the pod subnet's address %s", a)
			}
		}
	}
}

// TestContainerGetsItsConfig: env (image's and container's), args, working folder,
// user and groups, mounts read-write and read-only, a device node through a node path,
// resolv.conf, hostname; the root's writes stay in the container; the termination
// message and exit code are reported.
func TestContainerGetsItsConfig(t *testing.T) {
	e := start(t)
	ref := e.pull("test.local/shell")
	id, cfg, _ := e.sandbox("config-pod")
	data := filepath.Join(e.work, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(data, 0o777); err != nil {
		t.Fatal(err)
	}
	configFile := filepath.Join(e.work, "app.conf")
	if err := os.WriteFile(configFile, []byte("setting=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	termLog := filepath.Join(e.work, "termination-log")
	// The kubelet creates it writable by any user, as here.
	if err := os.WriteFile(termLog, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(termLog, 0o666); err != nil {
		t.Fatal(err)
	}
	script := `echo "args=$0 $1"; echo "env=$FROM_IMAGE $GREETING"; echo "cwd=$(pwd)"; echo "ids=$(id -u) $(id -g) $(id -G)";
echo "host=$(hostname)"; cat /etc/app/app.conf; cat /dev/fake/npu0; grep nameserver /etc/resolv.conf;
echo written > /data/out && echo "data=ok";
echo x > /etc/app/app.conf 2>/dev/null || echo "ro=refused";
echo x > /var/tmp/in-root && echo "root=writable";
echo "last words" > /dev/termination-log; echo "to stderr" >&2; exit 3`
	cid, err := e.run(id, cfg, &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: "shell"},
		Image:      &runtimeapi.ImageSpec{Image: ref},
		Args:       []string{script, "first-arg", "second-arg"},
		Envs:       kv("GREETING", "hi there"),
		WorkingDir: "/work/dir",
		Mounts: []*runtimeapi.Mount{
			{ContainerPath: "/data", HostPath: data},
			{ContainerPath: "/etc/app/app.conf", HostPath: configFile, Readonly: true},
			{ContainerPath: "/dev/termination-log", HostPath: termLog},
		},
		Devices: []*runtimeapi.Device{{ContainerPath: "/dev/fake/npu0", HostPath: "/dev/fake/npu0", Permissions: "rw"}},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			RunAsUser: &runtimeapi.Int64Value{Value: 1234}, RunAsGroup: &runtimeapi.Int64Value{Value: 2345},
			SupplementalGroups: []int64{3456}, NoNewPrivs: true,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	st := e.waitExited(cid)
	out := e.logOf(st)
	for _, want := range []string{
		"args=first-arg second-arg", "env=yes hi there", "cwd=/work/dir", "ids=1234 2345 2345 3456", "host=config-pod",
		"setting=1", "a fake device node", "nameserver 10.96.0.10", "data=ok", "ro=refused", "root=writable", "to stderr",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the container's log lacks %q:\n%s", want, out)
		}
	}
	if st.GetExitCode() != 3 || st.GetReason() != processcri.ReasonError {
		t.Errorf("exit code %d, reason %q; want 3, %q", st.GetExitCode(), st.GetReason(), processcri.ReasonError)
	}
	if got := readFile(termLog); got != "last words\n" {
		t.Errorf("termination message file has %q, want %q", got, "last words\n")
	}
	if got := readFile(filepath.Join(data, "out")); got != "written\n" {
		t.Errorf("the read-write mount's file has %q on the host, want %q", got, "written\n")
	}
	if _, err := os.Stat("/var/tmp/in-root"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a write to the container's root reached the host: %v", err)
	}
	if _, err := os.Stat("/work/dir"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the container's working folder was created on the host: %v", err)
	}
}

// TestLifecycle: StopContainer's SIGTERM reaches a server that exits 0 (Completed); a
// process that ignores it is killed after the timeout (137, Error); a missing program
// fails the start; a read-only root refuses writes; ExecSync runs in the container with
// its user and reports exit codes and timeouts.
func TestLifecycle(t *testing.T) {
	e := start(t)
	server := e.pull("test.local/podserver:v1")
	shell := e.pull("test.local/shell")
	id, cfg, _ := e.sandbox("life-pod")

	sid, err := e.run(id, cfg, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "server"}, Image: &runtimeapi.ImageSpec{Image: server}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := e.call()
	defer cancel()
	var resp *runtimeapi.ExecSyncResponse
	deadline := time.Now().Add(exitTimeout)
	for {
		resp, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: sid, Cmd: []string{"sh", "-c", "id -u; cat /proc/1/cmdline | tr '\\0' ' '; exit 7"}, Timeout: 30})
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || resp.GetExitCode() != 7 || !strings.HasPrefix(string(resp.GetStdout()), "65532\n/usr/local/bin/podserver") {
		t.Errorf("ExecSync: %v, exit %d, stdout %q; want 7 and uid 65532 with podserver as PID 1", err, resp.GetExitCode(), resp.GetStdout())
	}
	_, err = e.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: sid, Cmd: []string{"sleep", "30"}, Timeout: 1})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("ExecSync past its timeout: %v; want DeadlineExceeded", err)
	}
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: sid, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	st := e.status(sid)
	if st.GetState() != runtimeapi.ContainerState_CONTAINER_EXITED || st.GetExitCode() != 0 || st.GetReason() != processcri.ReasonCompleted ||
		!strings.Contains(e.logOf(st), "podserver stopped by SIGTERM") {
		t.Errorf("after StopContainer: %s, exit %d, %q, log:\n%s\nwant exited 0 Completed after SIGTERM", st.GetState(), st.GetExitCode(), st.GetReason(), e.logOf(st))
	}

	stubborn, err := e.run(id, cfg, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "stubborn"}, Image: &runtimeapi.ImageSpec{Image: shell},
		Args: []string{"trap '' TERM; echo ready; while :; do sleep 1; done"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: stubborn, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if st := e.status(stubborn); st.GetExitCode() != 137 || st.GetReason() != processcri.ReasonError {
		t.Errorf("a container ignoring SIGTERM: exit %d, %q; want 137 (SIGKILL), %q", st.GetExitCode(), st.GetReason(), processcri.ReasonError)
	}

	_, err = e.run(id, cfg, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "missing"}, Image: &runtimeapi.ImageSpec{Image: shell},
		Command: []string{"no-such-program"}})
	if err == nil || !strings.Contains(err.Error(), "no-such-program") || !strings.Contains(err.Error(), "not found") {
		t.Errorf("starting a missing program: %v; want an error naming it", err)
	}

	ro, err := e.run(id, cfg, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "readonly"}, Image: &runtimeapi.ImageSpec{Image: shell},
		Args:  []string{"touch /should-fail 2>/dev/null && echo wrote || echo refused; touch /tmp/ok && echo tmp-ok"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ReadonlyRootfs: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := e.waitExited(ro); st.GetExitCode() != 0 || st.GetReason() != processcri.ReasonCompleted || e.logOf(st) != "refused\ntmp-ok\n" {
		t.Errorf("read-only root: exit %d %q, log %q; want 0 Completed, %q", st.GetExitCode(), st.GetReason(), e.logOf(st), "refused\ntmp-ok\n")
	}

	if _, err := e.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	list, err := e.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil || len(list.GetContainers()) != 0 {
		t.Errorf("containers after RemovePodSandbox: %v, %v; want none", list.GetContainers(), err)
	}
}

// TestStopLeavesNothing: stopping the node (or killing its runtime, as a crash would)
// ends every process it started (sandboxes, containers, one that ignores SIGTERM) and
// with them its namespaces; no mount or interface of it is left on the host.
func TestStopLeavesNothing(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(map[bool]string{false: "stop", true: "crash"}[crash], func(t *testing.T) {
			before, err := footprint.Addresses()
			if err != nil {
				t.Fatal(err)
			}
			e := start(t)
			server := e.pull("test.local/podserver:v1")
			shell := e.pull("test.local/shell")
			id, cfg, _ := e.sandbox("doomed")
			if _, err := e.run(id, cfg, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "server"}, Image: &runtimeapi.ImageSpec{Image: server}}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.run(id, cfg, &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "stubborn"}, Image: &runtimeapi.ImageSpec{Image: shell},
				Args: []string{"trap '' TERM; while :; do sleep 1; done"}}); err != nil {
				t.Fatal(err)
			}
			procs := descendants(t, parentOf(t, e.node.PID))
			// node-init, the runtime, a pause process, two containers (and a sleep).
			if len(procs) < 5 {
				t.Fatalf("found %d processes of the node, want at least 5: the check would see nothing", len(procs))
			}
			// The node's network, mount and PID namespaces and the sandbox's network one.
			nss, err := footprint.Namespaces(e.node.PID)
			if err != nil || len(nss) < 4 {
				t.Fatalf("the node's namespaces: %v %v; want at least 4: the check would see nothing", nss, err)
			}
			if crash {
				if err := syscall.Kill(e.node.PID, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				select {
				case <-e.node.Exited():
				case <-time.After(stopTimeout):
					t.Fatal("the node did not end after its runtime was killed")
				}
			} else if err := e.node.Stop(stopTimeout); err != nil {
				t.Fatal(err)
			}
			waitGone(t, procs)
			if left := footprint.Left(nss, e.work); len(left) > 0 {
				t.Errorf("after the node ended, it left:\n%s", strings.Join(left, "\n"))
			}
			if added, err := footprint.NewAddresses(before); err != nil || len(added) > 0 {
				t.Errorf("the host has interfaces or addresses it had not before: %v %v", added, err)
			}
		})
	}
}

// procStat is a process's parent and start time (field 22, to tell a reused pid).
func procStat(pid int) (ppid int, start string, ok bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", false
	}
	i := bytes.LastIndexByte(data, ')')
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, "", false
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[19], true
}

func parentOf(t *testing.T, pid int) int {
	t.Helper()
	ppid, _, ok := procStat(pid)
	if !ok {
		t.Fatalf("process %d is gone", pid)
	}
	return ppid
}

// descendants are root and every process under it, with their start times.
func descendants(t *testing.T, root int) map[int]string {
	t.Helper()
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(pid); ok {
			children[ppid] = append(children[ppid], pid)
		}
	}
	out := map[int]string{}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if _, start, ok := procStat(pid); ok {
			out[pid] = start
		}
		queue = append(queue, children[pid]...)
	}
	return out
}

func waitGone(t *testing.T, procs map[int]string) {
	t.Helper()
	deadline := time.Now().Add(stopTimeout)
	for {
		var left []string
		for pid, start := range procs {
			if _, s, ok := procStat(pid); ok && s == start {
				cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				left = append(left, fmt.Sprintf("%d (%s)", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of the node still run after it stopped: %s", strings.Join(left, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
