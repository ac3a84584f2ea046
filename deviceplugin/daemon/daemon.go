// Package daemon wires the device plugin together: discovery and the health monitor feed
// the NPU plugin, which publishes to the kubelet through the plugin server and keeps the
// CDI spec, the node-labels file and the metrics up to date. cmd/rknpu-device-plugin only
// parses flags into Options and calls Run.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	"k8s.io/apimachinery/pkg/api/resource"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/rkllm-operator/rkllm-operator/deviceplugin/cdi"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/discovery"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/health"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/metrics"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/nodelabels"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/npu"
	"github.com/rkllm-operator/rkllm-operator/deviceplugin/pluginserver"
)

// SocketName is the plugin's socket in the kubelet's device-plugin folder.
const SocketName = "rknpu.sock"

// DeviceTreeSource is the host folder behind /proc/device-tree, mounted for
// --device-tree-mount.
const DeviceTreeSource = "/sys/firmware/devicetree/base"

// Options are the plugin's settings, one per command-line flag.
type Options struct {
	Root             string
	KubeletDir       string
	Mode             string
	MinDriverVersion string
	SoCs             string
	HealthInterval   time.Duration
	RuntimeLibMount  string
	DeviceTreeMount  string
	CDI              bool
	CDISpecDir       string
	NodeLabels       string
	MetricsAddr      string
	ModelCacheDir    string
	ModelCacheSize   string
}

// DefaultOptions returns the defaults the flags document.
func DefaultOptions() Options {
	return Options{
		Root:             "/",
		KubeletDir:       filepath.Clean(pluginapi.DevicePluginPath),
		Mode:             string(npu.ModeExclusive),
		MinDriverVersion: "0.9.7",
		SoCs:             strings.Join(npu.DefaultServedSoCs, ","),
		HealthInterval:   health.DefaultInterval,
		CDISpecDir:       cdi.DefaultSpecDir,
		MetricsAddr:      ":9464",
	}
}

// AddFlags binds the options to flags on fs, with their current values as defaults.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Root, "root", o.Root, "Filesystem root under which /proc, /sys and /dev are read (e.g. /host when the host's folders are mounted there).")
	fs.StringVar(&o.KubeletDir, "kubelet-dir", o.KubeletDir, "The kubelet's device-plugin folder, holding kubelet.sock; the plugin's socket "+SocketName+" is created there.")
	fs.StringVar(&o.Mode, "mode", o.Mode, "How the NPU is offered: exclusive (one rockchip.com/npu unit per SoC) or cores (one unit per NPU core: a concurrency cap, not isolation).")
	fs.StringVar(&o.MinDriverVersion, "min-driver-version", o.MinDriverVersion, "Oldest rknpu driver version whose NPU is offered; older drivers make the units Unhealthy.")
	fs.StringVar(&o.SoCs, "socs", o.SoCs, "Comma-separated SoCs whose NPU is advertised: those the RKLLM runtime serves. Other recognised chips ("+discovery.RecognisedSoCs+") are labelled but not advertised.")
	fs.DurationVar(&o.HealthInterval, "health-interval", o.HealthInterval, "Period of the full NPU rescan; device-node removal is seen at once through file events.")
	fs.StringVar(&o.RuntimeLibMount, "runtime-lib-mount", o.RuntimeLibMount, "HOST_PATH[:CONTAINER_PATH] of the runtime library (librkllmrt.so) to mount read-only into every NPU container; empty for none.")
	fs.StringVar(&o.DeviceTreeMount, "device-tree-mount", o.DeviceTreeMount, "Container path at which to mount the host's "+DeviceTreeSource+" read-only, for unprivileged pods; empty for none.")
	fs.BoolVar(&o.CDI, "cdi", o.CDI, "Also return CDI device names (rockchip.com/npu=ID) and write their CDI spec to --cdi-spec-dir.")
	fs.StringVar(&o.CDISpecDir, "cdi-spec-dir", o.CDISpecDir, "Folder for the CDI spec (with --cdi).")
	fs.StringVar(&o.NodeLabels, "node-labels", o.NodeLabels, "Path of a node-feature-discovery local features file to write ("+nodelabels.DefaultPath+" for nfd-worker's default); empty to write none.")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", o.MetricsAddr, "Address for Prometheus metrics on /metrics; empty to disable.")
	fs.StringVar(&o.ModelCacheDir, "model-cache-dir", o.ModelCacheDir, "Host folder of the node's model cache, mounted writable at "+npu.ModelCacheContainerPath+" into every NPU container (created under --root with mode 1777 when missing), so each model file is downloaded once per node; empty for none.")
	fs.StringVar(&o.ModelCacheSize, "model-cache-max-size", o.ModelCacheSize, "Size limit of the model cache, such as 20Gi: past it the least recently used files not in use are removed; empty or 0 for none.")
}

// config is Options checked and parsed.
type config struct {
	npu         npu.Config
	kubeletDir  string
	interval    time.Duration
	cdiDir      string
	labelsPath  string
	metricsAddr string
}

// check validates the options; each error names the flag and what to do.
func (o Options) check() (config, error) {
	var errs []error
	c := config{kubeletDir: o.KubeletDir, interval: o.HealthInterval, labelsPath: o.NodeLabels, metricsAddr: o.MetricsAddr}
	c.npu.Root = o.Root
	c.npu.CDI = o.CDI
	if o.CDI {
		c.cdiDir = o.CDISpecDir
	}
	if info, err := os.Stat(o.Root); err != nil || !info.IsDir() {
		errs = append(errs, fmt.Errorf("--root %q is not a readable folder", o.Root))
	}
	if !filepath.IsAbs(o.KubeletDir) {
		errs = append(errs, fmt.Errorf("--kubelet-dir %q must be an absolute path", o.KubeletDir))
	}
	mode, err := npu.ParseMode(o.Mode)
	if err != nil {
		errs = append(errs, fmt.Errorf("--mode: %w", err))
	}
	c.npu.Mode = mode
	if c.npu.MinDriverVersion, err = discovery.ParseVersion(o.MinDriverVersion); err != nil {
		errs = append(errs, fmt.Errorf("--min-driver-version: %w", err))
	}
	if c.npu.ServedSoCs, err = npu.ParseSoCs(o.SoCs); err != nil {
		errs = append(errs, fmt.Errorf("--socs: %w", err))
	}
	if o.HealthInterval <= 0 {
		errs = append(errs, fmt.Errorf("--health-interval %v must be a positive duration, such as 1s: it is the period of the NPU rescan", o.HealthInterval))
	}
	mounts, mountErrs := o.checkMounts()
	c.npu.Mounts = mounts
	errs = append(errs, mountErrs...)
	var cacheErr error
	c.npu.ModelCache, cacheErr = o.checkModelCache()
	errs = append(errs, cacheErr)
	if o.CDI && !filepath.IsAbs(o.CDISpecDir) {
		errs = append(errs, fmt.Errorf("--cdi-spec-dir %q must be an absolute path", o.CDISpecDir))
	}
	if o.NodeLabels != "" && !filepath.IsAbs(o.NodeLabels) {
		errs = append(errs, fmt.Errorf("--node-labels %q must be an absolute path", o.NodeLabels))
	}
	return c, errors.Join(errs...)
}

// checkMounts validates --runtime-lib-mount and --device-tree-mount.
func (o Options) checkMounts() ([]npu.Mount, []error) {
	var mounts []npu.Mount
	var errs []error
	if o.RuntimeLibMount != "" {
		m, err := npu.ParseMount(o.RuntimeLibMount)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--runtime-lib-mount: %w", err))
		case !existsUnder(o.Root, m.HostPath):
			errs = append(errs, fmt.Errorf("--runtime-lib-mount: %s does not exist on the host (looked under --root %s); install the runtime library there or drop the flag", m.HostPath, o.Root))
		default:
			mounts = append(mounts, m)
		}
	}
	if o.DeviceTreeMount != "" {
		if !filepath.IsAbs(o.DeviceTreeMount) {
			errs = append(errs, fmt.Errorf("--device-tree-mount %q must be an absolute container path", o.DeviceTreeMount))
		} else {
			mounts = append(mounts, npu.Mount{HostPath: DeviceTreeSource, ContainerPath: o.DeviceTreeMount})
		}
	}
	return mounts, errs
}

// checkModelCache validates --model-cache-dir and --model-cache-max-size.
func (o Options) checkModelCache() (*npu.ModelCache, error) {
	if o.ModelCacheDir == "" {
		if o.ModelCacheSize != "" {
			return nil, errors.New("--model-cache-max-size needs --model-cache-dir")
		}
		return nil, nil
	}
	if !filepath.IsAbs(o.ModelCacheDir) {
		return nil, fmt.Errorf("--model-cache-dir %q must be an absolute host path", o.ModelCacheDir)
	}
	c := &npu.ModelCache{HostPath: filepath.Clean(o.ModelCacheDir)}
	if o.ModelCacheSize != "" {
		q, err := resource.ParseQuantity(o.ModelCacheSize)
		if err != nil || q.Sign() < 0 {
			return nil, fmt.Errorf("--model-cache-max-size %q: want a size such as 20Gi", o.ModelCacheSize)
		}
		c.MaxBytes = q.Value()
	}
	return c, nil
}

// ModelCacheMode is the mode of the model cache folder: everyone may add files (pods
// run as any user), only a file's owner may remove it (like /tmp).
const ModelCacheMode = os.ModeSticky | 0o777

// prepareModelCache creates the cache folder on the host (under root) with
// ModelCacheMode, or gives an existing one that mode, so the kubelet's mount finds it and
// non-root pods can write to it.
func prepareModelCache(root string, c *npu.ModelCache) error {
	dir := filepath.Join(root, c.HostPath)
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // chmod below
		return fmt.Errorf("--model-cache-dir: %w", err)
	}
	if err := os.Chmod(dir, ModelCacheMode); err != nil {
		return fmt.Errorf("--model-cache-dir: %w", err)
	}
	return nil
}

func existsUnder(root, hostPath string) bool {
	_, err := os.Stat(filepath.Join(root, hostPath))
	return err == nil
}

// Run runs the plugin until ctx is done (SIGTERM), then stops serving, removes its socket
// and returns nil. It returns an error for bad options or when a part cannot run at all
// (the metrics address is taken, a folder cannot be watched).
func Run(ctx context.Context, o Options, log logr.Logger) error {
	cfg, err := o.check()
	if err != nil {
		return err
	}
	if c := cfg.npu.ModelCache; c != nil {
		if err := prepareModelCache(cfg.npu.Root, c); err != nil {
			return err
		}
	}
	m := metrics.New(func() ([]int, error) { return discovery.ReadLoad(cfg.npu.Root) })

	var server *pluginserver.Server
	plugin := npu.NewPlugin(cfg.npu, func(d []*pluginapi.Device) { server.SetDevices(d) }, m, log)
	server, err = pluginserver.New(pluginserver.Config{
		ResourceName: npu.ResourceName, Dir: cfg.kubeletDir, Socket: SocketName,
		PreferredAllocation: cfg.npu.Mode == npu.ModeCores,
	}, plugin, m, log.WithName("kubelet"))
	if err != nil {
		return err
	}

	var metricsLis net.Listener
	if cfg.metricsAddr != "" {
		var lc net.ListenConfig
		if metricsLis, err = lc.Listen(ctx, "tcp", cfg.metricsAddr); err != nil {
			return fmt.Errorf("--metrics-addr: %w", err)
		}
	}

	log.Info("starting", "root", cfg.npu.Root, "kubeletDir", cfg.kubeletDir, "mode", cfg.npu.Mode,
		"minDriverVersion", cfg.npu.MinDriverVersion.String(), "socs", cfg.npu.ServedSoCs, "cdi", cfg.npu.CDI, "nodeLabels", cfg.labelsPath, "metricsAddr", cfg.metricsAddr,
		"modelCacheDir", o.ModelCacheDir, "modelCacheMaxSize", o.ModelCacheSize)
	// The first inventory is applied before serving, so the kubelet's first ListAndWatch
	// already has the units.
	inventories := make(chan discovery.Inventory)
	sinks := newSinks(cfg, log)
	first := discovery.Scan(cfg.npu.Root)
	plugin.Update(first)
	sinks.write(first, plugin.UnitIDs())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return server.Run(ctx) })
	g.Go(func() error {
		return (&health.Monitor{Root: cfg.npu.Root, Interval: cfg.interval, Log: log.WithName("health")}).Run(ctx, inventories)
	})
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case inv := <-inventories:
				plugin.Update(inv)
				sinks.write(inv, plugin.UnitIDs())
			}
		}
	})
	if metricsLis != nil {
		g.Go(func() error { return serveMetrics(ctx, metricsLis, m.Handler()) })
	}
	err = g.Wait()
	log.Info("stopped")
	return err
}

// sinks are the files kept in step with the inventory: the CDI spec and the NFD labels.
type sinks struct {
	cdi    *cdi.Writer
	labels *nodelabels.Writer
	log    logr.Logger
}

func newSinks(cfg config, log logr.Logger) *sinks {
	s := &sinks{log: log}
	if cfg.cdiDir != "" {
		s.cdi = cdi.NewWriter(cfg.cdiDir)
	}
	if cfg.labelsPath != "" {
		s.labels = &nodelabels.Writer{Path: cfg.labelsPath}
	}
	return s
}

// write updates the files; failures are logged and retried at the next change, since the
// plugin serves the kubelet without them.
func (s *sinks) write(inv discovery.Inventory, unitIDs []string) {
	if s.cdi != nil {
		if err := s.cdi.Write(unitIDs, inv.NodePaths()); err != nil {
			s.log.Error(err, "CDI spec not updated; CDI-aware runtimes may not find the NPU's nodes")
		}
	}
	if s.labels != nil {
		if err := s.labels.Write(inv); err != nil {
			s.log.Error(err, "node labels not updated")
		}
	}
}

// serveMetrics serves /metrics until ctx is done.
func serveMetrics(ctx context.Context, lis net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("stopping the metrics server: %w", err)
	}
	return nil
}
