// Package serve wires rkllm-gateway together: the cache of RKLLMModels and
// EndpointSlices, the catalog, the scaler and its decision lease, the front door, its
// listener and the admin listener (health and metrics), and runs them until the
// context ends.
package serve

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"hash/maphash"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/net/netutil"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/gateway/auth"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/httpapi"
	"github.com/rkllm-operator/rkllm-operator/gateway/metrics"
	"github.com/rkllm-operator/rkllm-operator/gateway/proxy"
	"github.com/rkllm-operator/rkllm-operator/gateway/routing"
	"github.com/rkllm-operator/rkllm-operator/gateway/scaling"
)

// Options are the gateway's settings (flags).
type Options struct {
	Listen, AdminListen string
	Namespaces          string
	APIKeysFile         string
	Identity            string
	LeaseNamespace      string
	LeaseName           string
	LeaseDuration       time.Duration
	MaxConnections      int
	ReadHeaderTimeout   time.Duration
	IdleTimeout         time.Duration
	ShutdownTimeout     time.Duration
	DialTimeout         time.Duration
	NoAffinity          bool
	AffinityLoadFactor  float64

	HTTP    httpapi.Options
	Scaling scaling.Options
}

// BindFlags registers the options' flags with their defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Listen, "listen", ":8080", "Address of the APIs (/v1/ and /api/).")
	fs.StringVar(&o.AdminListen, "admin-listen", ":8081", "Address of /healthz, /readyz and /metrics, apart from client traffic.")
	fs.StringVar(&o.Namespaces, "namespaces", "", "Comma-separated namespaces whose RKLLMModels the gateway serves; all when empty.")
	fs.StringVar(&o.APIKeysFile, "api-keys-file", "", "YAML file of client API keys ({keys: [{name, key, models}]}); reloaded when it changes. Empty: no key is needed.")
	fs.StringVar(&o.Identity, "identity", "", "This replica's name in the decision lease; default the host name (the pod's name).")
	fs.StringVar(&o.LeaseNamespace, "lease-namespace", "", "Namespace of the decision lease; default the gateway's own (from its service account).")
	fs.StringVar(&o.LeaseName, "lease-name", "rkllm-gateway-decisions", "Name of the Lease every gateway replica holds while it decides a scaling change.")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", 15*time.Second, "How long a decision may hold the lease before another replica takes it.")
	fs.IntVar(&o.MaxConnections, "max-connections", 1024, "Client connections held at once; more wait to be accepted.")
	fs.DurationVar(&o.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "Time a client has to send a request's headers.")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", 2*time.Minute, "How long an idle kept-alive client connection stays open.")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "How long a stopping gateway lets requests in flight finish.")
	fs.DurationVar(&o.DialTimeout, "dial-timeout", 5*time.Second, "Time to connect to a replica before the next is tried.")
	fs.BoolVar(&o.NoAffinity, "no-affinity", false, "Send every request to the least loaded replica, ignoring conversations.")
	fs.Float64Var(&o.AffinityLoadFactor, "affinity-load-factor", routing.DefaultLoadFactor, "A conversation stays on its replica while that replica's load is at most this times the mean.")
	h := &o.HTTP
	fs.Int64Var(&h.MaxBodyBytes, "max-body-bytes", httpapi.DefaultMaxBodyBytes, "Largest request body.")
	fs.IntVar(&h.MaxInFlightPerReplica, "max-inflight-per-replica", httpapi.DefaultMaxInFlightPerReplica, "Requests sent to one replica at once; more wait in the gateway's queue.")
	fs.IntVar(&h.MaxQueue, "max-queue", httpapi.DefaultMaxQueue, "Requests that may wait per model; more are refused (429).")
	fs.DurationVar(&h.QueueTimeout, "queue-timeout", httpapi.DefaultQueueTimeout, "How long a request may wait for a busy replica.")
	fs.DurationVar(&h.KeepAlive, "keepalive-interval", httpapi.DefaultKeepAlive, "Interval of the comments sent on a waiting stream.")
	fs.IntVar(&h.MaxPerClient, "max-requests-per-client", httpapi.DefaultMaxPerClient, "Requests one client (API key, or address without keys) may have at once; -1: no limit.")
	fs.DurationVar(&h.RetryAfter, "retry-after", httpapi.DefaultRetryAfter, "Retry-After of refusals that will pass (no NPU, a full queue).")
	s := &o.Scaling
	fs.DurationVar(&s.ActivationTimeout, "activation-timeout", scaling.DefaultActivationTimeout, "How long a request waits for a model to get a ready replica.")
	fs.DurationVar(&s.NoCapacityWait, "no-capacity-wait", scaling.DefaultNoCapacityWait,
		"How long an activation waits for an NPU to free (a busy model to go idle) before answering 503; negative: answer at once.")
	fs.DurationVar(&s.MinLifetime, "min-lifetime", scaling.DefaultMinLifetime, "A model scaled up less than this ago is not evicted.")
	fs.DurationVar(&s.Recheck, "recheck-interval", scaling.DefaultRecheck, "How often a waiting activation looks at the cluster again.")
	fs.DurationVar(&s.Sweep, "sweep-interval", scaling.DefaultSweep, "How often idle models are scaled down and status.lastRequestTime is written.")
}

// What the gateway reads and writes (`make manifests` turns these markers into
// config/gateway/role.yaml, and the chart's ClusterRole): models (spec.replicas, the
// scaled-up-at annotation, status.lastRequestTime), their EndpointSlices, Deployments
// (where their pods may run), Secrets named by spec.server.apiKeySecretRef (one at a
// time, never listed), the NPU pods and nodes of the cluster, and Events. The decision
// lease is a Role of its own in the gateway's namespace.
// +kubebuilder:rbac:groups=inference.rkllm.io,resources=rkllmmodels,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=inference.rkllm.io,resources=rkllmmodels/status,verbs=patch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=pods;nodes,verbs=list
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Run serves until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, o Options, log logr.Logger) error {
	if err := o.complete(); err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(inferencev1alpha1.AddToScheme(scheme))
	namespaces := splitList(o.Namespaces)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  catalog.CacheOptions(namespaces),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	cat, err := catalog.NewKube(ctx, mgr.GetCache(), log.WithName("catalog"))
	if err != nil {
		return err
	}
	m := metrics.New()
	clk := clock.RealClock{}
	h, err := newHandler(o, mgr, cat, m, log)
	if err != nil {
		return err
	}
	o.Scaling.Namespaces = namespaces
	// The lease is read and written on the API server itself: through the cache its
	// reads would lag the other replicas' writes (and need list and watch on Leases).
	direct, err := client.New(cfg, client.Options{Scheme: scheme, Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("creating the lease's client: %w", err)
	}
	sc := scaling.New(ctx, scaling.Deps{
		Client: mgr.GetClient(), Reader: mgr.GetAPIReader(), Recorder: mgr.GetEventRecorder("rkllm-gateway"),
		Catalog: cat, Activity: h.Activity(), Metrics: m, Clock: clk, Log: log.WithName("scaling"),
		Lease: &scaling.Lease{Client: direct, Key: client.ObjectKey{Namespace: o.LeaseNamespace, Name: o.LeaseName},
			Identity: o.Identity, Duration: o.LeaseDuration, Retry: 250 * time.Millisecond, Clock: clk},
		Probe: scaling.HTTPProber(&http.Client{}),
	}, o.Scaling)
	h.Scaler = sc

	var synced atomic.Bool
	for _, r := range []manager.Runnable{cat, h, sc, manager.RunnableFunc(func(ctx context.Context) error {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			synced.Store(true)
		}
		return nil
	})} {
		if err := mgr.Add(r); err != nil {
			return fmt.Errorf("adding to the manager: %w", err)
		}
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return serveAdmin(ctx, o, m, &synced) })); err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error { return serveAPI(ctx, o, h, log) })); err != nil {
		return err
	}
	log.Info("starting rkllm-gateway", "listen", o.Listen, "admin", o.AdminListen, "namespaces", namespaces, "identity", o.Identity,
		"apiKeys", o.APIKeysFile != "")
	return mgr.Start(ctx)
}

// newHandler builds the front door, with the API keys when a file is given.
func newHandler(o Options, mgr manager.Manager, cat catalog.Catalog, m *metrics.Metrics, log logr.Logger) (*httpapi.Handler, error) {
	clk := clock.RealClock{}
	d := httpapi.Deps{
		Catalog: cat, Metrics: m, Clock: clk, Log: log.WithName("api"), Seed: maphash.MakeSeed(),
		Upstream: &auth.ServerKeys{Reader: mgr.GetAPIReader(), TTL: auth.DefaultUpstreamTTL, Clock: clk},
		Proxy:    &proxy.Proxy{Transport: proxy.NewTransport(o.DialTimeout, o.HTTP.MaxInFlightPerReplica*2), Clock: clk},
	}
	if o.APIKeysFile != "" {
		keys, err := auth.NewStore(o.APIKeysFile, log.WithName("keys"))
		if err != nil {
			return nil, err
		}
		if err := mgr.Add(keys); err != nil {
			return nil, err
		}
		d.Keys = keys.Keys
	}
	o.HTTP.Routing = routing.Policy{NoAffinity: o.NoAffinity, LoadFactor: o.AffinityLoadFactor}
	o.HTTP.ActivationTimeout = o.Scaling.ActivationTimeout
	return httpapi.New(d, o.HTTP), nil
}

// complete fills the defaults that depend on where the gateway runs.
func (o *Options) complete() error {
	if o.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("naming this replica (set --identity): %w", err)
		}
		o.Identity = host
	}
	if o.LeaseNamespace == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return errors.New("--lease-namespace is needed outside a pod (no service account namespace to default to)")
		}
		o.LeaseNamespace = strings.TrimSpace(string(b))
	}
	if o.LeaseDuration < 2*time.Second {
		return fmt.Errorf("--lease-duration %s is too short: a decision needs a few seconds", o.LeaseDuration)
	}
	return nil
}

// serveAPI serves the front door on o.Listen until ctx ends, then lets requests in
// flight finish for up to ShutdownTimeout.
func serveAPI(ctx context.Context, o Options, h http.Handler, log logr.Logger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.Listen, err)
	}
	if o.MaxConnections > 0 {
		ln = netutil.LimitListener(ln, o.MaxConnections)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	log.Info("serving the APIs", "address", ln.Addr().String())
	return serve(ctx, srv, ln, o.ShutdownTimeout)
}

// serveAdmin serves /healthz, /readyz (once the cache has synced) and /metrics.
func serveAdmin(ctx context.Context, o Options, m *metrics.Metrics, synced *atomic.Bool) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", o.AdminListen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.AdminListen, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !synced.Load() {
			http.Error(w, "the cache of models has not synced yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /metrics", m)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	return serve(ctx, srv, netutil.LimitListener(ln, 32), 5*time.Second)
}

func serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// splitList splits a comma-separated flag, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
