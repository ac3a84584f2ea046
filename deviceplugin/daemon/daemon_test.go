package daemon_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/daemon"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery/discoverytest"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/pluginserver/kubelettest"
)

// Named timeouts. Health changes must reach ListAndWatch within a second; the test allows
// more so a loaded CI machine does not fail it (the benchmark measures the real figure).
const (
	registerTimeout = 10 * time.Second
	healthTimeout   = 5 * time.Second
)

type harness struct {
	root, kubeletDir, labels, cdiDir, metricsAddr string
	kubelet                                       *kubelettest.Stub
}

// start runs the daemon on an Orange Pi 5 fake root against a kubelet stub until the test
// ends, and checks that Run then returned nil and removed its socket.
func start(t *testing.T, tree discoverytest.Tree, edit func(*daemon.Options)) *harness {
	t.Helper()
	tmp := t.TempDir()
	h := &harness{
		kubeletDir: filepath.Join(tmp, "kubelet"), labels: filepath.Join(tmp, "features.d", "rockchip-npu"),
		cdiDir: filepath.Join(tmp, "cdi"), metricsAddr: freeAddr(t),
	}
	var err error
	if h.root, err = tree.Write(filepath.Join(tmp, "root")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(h.kubeletDir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.kubelet = kubelettest.Start(t, h.kubeletDir)
	opts := daemon.DefaultOptions()
	opts.Root, opts.KubeletDir, opts.NodeLabels, opts.MetricsAddr = h.root, h.kubeletDir, h.labels, h.metricsAddr
	opts.CDI, opts.CDISpecDir = true, h.cdiDir
	if edit != nil {
		edit(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, opts, testr.New(t)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v on shutdown, want nil", err)
		}
		if _, err := os.Stat(filepath.Join(h.kubeletDir, daemon.SocketName)); !os.IsNotExist(err) {
			t.Errorf("plugin socket after shutdown: %v, want removed", err)
		}
	})
	return h
}

func freeAddr(t *testing.T) string {
	t.Helper()
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestPluginAgainstKubeletStub(t *testing.T) {
	h := start(t, discoverytest.RK3588(), nil)

	reg := h.kubelet.WaitRegistration(t, registerTimeout)
	if reg.ResourceName != "rockchip.com/npu" || reg.Endpoint != daemon.SocketName || reg.Options.GetGetPreferredAllocationAvailable() {
		t.Fatalf("registration = %+v (exclusive mode needs no preferred allocation)", reg)
	}
	client := h.kubelet.Dial(t, reg.Endpoint)
	devices := kubelettest.Watch(t, client)
	kubelettest.WaitDevices(t, devices, healthTimeout, "npu0 healthy", kubelettest.Health(pluginapi.Healthy, "npu0"))

	resp, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"npu0"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.ContainerResponses[0]
	var specs []string
	for _, d := range c.Devices {
		specs = append(specs, d.ContainerPath+"|"+d.HostPath+"|"+d.Permissions)
	}
	if want := []string{"/dev/dri/renderD129|/dev/dri/renderD129|rw", "/dev/dri/card1|/dev/dri/card1|rw"}; !reflect.DeepEqual(specs, want) {
		t.Errorf("DeviceSpecs = %v, want %v", specs, want)
	}
	wantEnv := map[string]string{
		"RKNPU_DEVICE_NODES": "/dev/dri/renderD129,/dev/dri/card1", "RKNPU_SOC": "rk3588", "RKNPU_CORES": "3",
		"RKNPU_DRIVER_VERSION": "0.9.8", "RKNPU_UNIT_IDS": "npu0",
	}
	if !reflect.DeepEqual(c.Envs, wantEnv) {
		t.Errorf("envs = %v, want %v", c.Envs, wantEnv)
	}
	if len(c.CdiDevices) != 1 || c.CdiDevices[0].Name != "rockchip.com/npu=npu0" {
		t.Errorf("CDI devices = %v", c.CdiDevices)
	}
	if len(c.Mounts) != 0 {
		t.Errorf("mounts = %v, want none without mount flags", c.Mounts)
	}

	// The node labels and the CDI spec were written.
	if labels, err := os.ReadFile(h.labels); err != nil || !strings.Contains(string(labels), "rockchip.com/npu.present=true\nrockchip.com/npu.soc=rk3588\n") {
		t.Errorf("node labels = %q, %v", labels, err)
	}
	if spec, err := os.ReadFile(filepath.Join(h.cdiDir, "rockchip.com-npu.json")); err != nil || !strings.Contains(string(spec), `"hostPath":"/dev/dri/renderD129"`) {
		t.Errorf("CDI spec = %s, %v", spec, err)
	}

	// Health: the render node vanishes and comes back.
	render := filepath.Join(h.root, "dev/dri/renderD129")
	if err := os.Remove(render); err != nil {
		t.Fatal(err)
	}
	kubelettest.WaitDevices(t, devices, healthTimeout, "npu0 unhealthy after renderD129 vanished", kubelettest.Health(pluginapi.Unhealthy, "npu0"))
	if _, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"npu0"}}},
	}); err == nil || !strings.Contains(err.Error(), "device node /dev/dri/renderD129 is missing") {
		t.Errorf("Allocate while unhealthy: %v", err)
	}
	if err := os.WriteFile(render, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	kubelettest.WaitDevices(t, devices, healthTimeout, "npu0 healthy after renderD129 returned", kubelettest.Health(pluginapi.Healthy, "npu0"))

	// Re-registration: the socket is deleted.
	if err := os.Remove(filepath.Join(h.kubeletDir, daemon.SocketName)); err != nil {
		t.Fatal(err)
	}
	reg = h.kubelet.WaitRegistration(t, registerTimeout)
	kubelettest.WaitDevices(t, kubelettest.Watch(t, h.kubelet.Dial(t, reg.Endpoint)), healthTimeout, "npu0 after the socket was deleted",
		kubelettest.Health(pluginapi.Healthy, "npu0"))

	// Re-registration: the kubelet restarts (sockets deleted, kubelet.sock re-created).
	h.kubelet.Restart(t)
	reg = h.kubelet.WaitRegistration(t, registerTimeout)
	client = h.kubelet.Dial(t, reg.Endpoint)
	kubelettest.WaitDevices(t, kubelettest.Watch(t, client), healthTimeout, "npu0 after the kubelet restart",
		kubelettest.Health(pluginapi.Healthy, "npu0"))

	// Metrics tell the story. The registration counters move just after the kubelet
	// answers, so they are polled.
	want := []string{
		`rknpu_core_load_percent{core="2"} 0`,
		`rknpu_unit_healthy{unit="npu0"} 1`,
		`rknpu_allocations_total{result="success"} 1`,
		`rknpu_allocations_total{result="failure"} 1`,
		`rknpu_kubelet_registrations_total{result="success"} 3`,
		`rknpu_kubelet_restarts_total 2`,
	}
	deadline := time.Now().Add(healthTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		body := get(t, "http://"+h.metricsAddr+"/metrics")
		var missing []string
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q after %v:\n%s", missing, healthTimeout, body)
		}
		<-tick.C
	}
}

func TestCoresModeWithMounts(t *testing.T) {
	tree := discoverytest.RK3588()
	tree.Load = "NPU load:  Core0: 90%, Core1:100%, Core2:  5%,"
	var root string
	h := start(t, tree, func(o *daemon.Options) {
		o.Mode = "cores"
		root = o.Root
		if err := discoverytest.WriteFile(root, "usr/lib/librkllmrt.so", "ELF"); err != nil {
			t.Fatal(err)
		}
		o.RuntimeLibMount = "/usr/lib/librkllmrt.so"
		o.DeviceTreeMount = "/run/rknpu/device-tree"
		o.ModelCacheDir = "/var/lib/rkllm/cache"
		o.ModelCacheSize = "20Gi"
		o.CDI = false
	})
	reg := h.kubelet.WaitRegistration(t, registerTimeout)
	if !reg.Options.GetGetPreferredAllocationAvailable() {
		t.Errorf("cores mode registered without preferred allocation: %+v", reg.Options)
	}
	client := h.kubelet.Dial(t, reg.Endpoint)
	kubelettest.WaitDevices(t, kubelettest.Watch(t, client), healthTimeout, "three cores",
		kubelettest.Health(pluginapi.Healthy, "npu0-core0", "npu0-core1", "npu0-core2"))

	pref, err := client.GetPreferredAllocation(context.Background(), &pluginapi.PreferredAllocationRequest{
		ContainerRequests: []*pluginapi.ContainerPreferredAllocationRequest{{
			AvailableDeviceIDs: []string{"npu0-core0", "npu0-core1", "npu0-core2"}, AllocationSize: 2,
		}},
	})
	if err != nil || !reflect.DeepEqual(pref.ContainerResponses[0].DeviceIDs, []string{"npu0-core2", "npu0-core0"}) {
		t.Fatalf("GetPreferredAllocation = %v, %v; want the two least-loaded cores", pref, err)
	}
	resp, err := client.Allocate(context.Background(), &pluginapi.AllocateRequest{
		ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: pref.ContainerResponses[0].DeviceIDs}},
	})
	if err != nil {
		t.Fatal(err)
	}
	c := resp.ContainerResponses[0]
	if c.Envs["RKNPU_CORE_MASK"] != "0x5" || c.Envs["RKNPU_UNIT_IDS"] != "npu0-core0,npu0-core2" ||
		c.Envs["RKNPU_MODEL_CACHE"] != "/var/cache/rkllm" || c.Envs["RKNPU_MODEL_CACHE_MAX_BYTES"] != "21474836480" {
		t.Errorf("envs = %v", c.Envs)
	}
	// The cache folder was made on the host, writable by the pods' users like /tmp.
	if fi, err := os.Stat(filepath.Join(root, "var/lib/rkllm/cache")); err != nil || fi.Mode()&os.ModePerm != 0o777 || fi.Mode()&os.ModeSticky == 0 {
		t.Errorf("model cache folder: %v %v, want a folder with mode 1777", fi, err)
	}
	var mounts []string
	for _, m := range c.Mounts {
		mounts = append(mounts, m.HostPath+"->"+m.ContainerPath+map[bool]string{true: ":ro", false: ":rw"}[m.ReadOnly])
	}
	want := []string{"/usr/lib/librkllmrt.so->/usr/lib/librkllmrt.so:ro", "/sys/firmware/devicetree/base->/run/rknpu/device-tree:ro",
		"/var/lib/rkllm/cache->/var/cache/rkllm:rw"}
	if !reflect.DeepEqual(mounts, want) {
		t.Errorf("mounts = %v, want %v", mounts, want)
	}
	if len(c.CdiDevices) != 0 {
		t.Errorf("CDI devices without --cdi: %v", c.CdiDevices)
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	root := t.TempDir()
	opts := daemon.DefaultOptions()
	opts.Root = root
	opts.KubeletDir = "relative/dir"
	opts.Mode = "shared"
	opts.MinDriverVersion = "new"
	opts.RuntimeLibMount = "/usr/lib/librkllmrt.so"
	opts.NodeLabels = "labels.txt"
	opts.HealthInterval = 0
	opts.ModelCacheDir = "cache"
	err := daemon.Run(context.Background(), opts, testr.New(t))
	if err == nil {
		t.Fatal("Run accepted bad options")
	}
	for _, want := range []string{
		`--kubelet-dir "relative/dir" must be an absolute path`,
		`--mode: mode "shared" is not one of "exclusive" or "cores"`,
		`--min-driver-version: version "new"`,
		"--runtime-lib-mount: /usr/lib/librkllmrt.so does not exist on the host (looked under --root " + root,
		`--node-labels "labels.txt" must be an absolute path`,
		"--health-interval 0s must be a positive duration, such as 1s",
		`--model-cache-dir "cache" must be an absolute host path`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestModelCacheSizeNeedsAFolder(t *testing.T) {
	for _, tt := range []struct{ dir, size, want string }{
		{"", "20Gi", "--model-cache-max-size needs --model-cache-dir"},
		{"/var/lib/rkllm/cache", "lots", `--model-cache-max-size "lots": want a size such as 20Gi`},
	} {
		opts := daemon.DefaultOptions()
		opts.Root = t.TempDir()
		opts.ModelCacheDir, opts.ModelCacheSize = tt.dir, tt.size
		if err := daemon.Run(context.Background(), opts, testr.New(t)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("--model-cache-dir %q --model-cache-max-size %q: %v, want %q", tt.dir, tt.size, err, tt.want)
		}
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// The plugin advertises rockchip.com/npu only on the SoCs the RKLLM runtime serves, and
// labels every recognised SoC; --socs overrides the list.
func TestOnlySoCsTheRuntimeServesAreAdvertised(t *testing.T) {
	cases := []struct {
		name, compatible, socs, soc string
		advertised                  bool
	}{
		{name: "rk3588", compatible: discoverytest.OrangePi5, soc: "rk3588", advertised: true},
		{name: "rk3576", compatible: discoverytest.RK3576EVB, soc: "rk3576", advertised: true},
		{name: "rv1126b", compatible: discoverytest.RV1126BEVB, soc: "rv1126b", advertised: true},
		{name: "rk3568", compatible: discoverytest.Rock3A, soc: "rk3568"},
		{name: "rk3566", compatible: discoverytest.RadxaZero3, soc: "rk3566"},
		{name: "rk3568 by --socs", compatible: discoverytest.Rock3A, socs: "rk3588,rk3568", soc: "rk3568", advertised: true},
		{name: "rk3588 left out by --socs", compatible: discoverytest.Rock5B, socs: "rk3576", soc: "rk3588"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := start(t, discoverytest.Board(tc.compatible), func(o *daemon.Options) {
				if tc.socs != "" {
					o.SoCs = tc.socs
				}
			})
			reg := h.kubelet.WaitRegistration(t, registerTimeout)
			// The first list is the inventory the plugin found before serving.
			devs := kubelettest.WaitDevices(t, kubelettest.Watch(t, h.kubelet.Dial(t, reg.Endpoint)), healthTimeout, "the first device list",
				func([]*pluginapi.Device) bool { return true })
			if got := kubelettest.Describe(devs); tc.advertised != (got == "[npu0=Healthy]") || (!tc.advertised && len(devs) != 0) {
				t.Errorf("%s: devices %s, advertised should be %v", tc.soc, got, tc.advertised)
			}
			labels, err := os.ReadFile(h.labels)
			if err != nil || !strings.Contains(string(labels), "rockchip.com/npu.soc="+tc.soc+"\n") {
				t.Errorf("node labels = %q, %v; want the SoC %s labelled", labels, err, tc.soc)
			}
		})
	}
}

func TestSoCsFlagIsChecked(t *testing.T) {
	opts := daemon.DefaultOptions()
	opts.Root = t.TempDir()
	opts.SoCs = "rk3588,rk9999"
	err := daemon.Run(context.Background(), opts, testr.New(t))
	if err == nil || !strings.Contains(err.Error(), `--socs: "rk9999" is not a SoC the plugin recognises`) {
		t.Errorf("Run with --socs rk9999: %v", err)
	}
}
