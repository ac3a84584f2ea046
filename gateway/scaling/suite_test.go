package scaling_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/gateway/catalog"
	"github.com/rkllm-operator/rkllm-operator/gateway/metrics"
	"github.com/rkllm-operator/rkllm-operator/gateway/scaling"
)

// These tests run the scaler against a real kube-apiserver (envtest) with the generated
// CRD: the decisions read the cluster and write models, Events and the lease through
// the API, and the catalog follows models and EndpointSlices through a real cache.
// There is no scheduler, kubelet or operator: the tests create the pods and
// EndpointSlices those would, and check what the gateway wrote.

var (
	cfg    *rest.Config
	k8s    client.Client
	scheme = runtime.NewScheme()
)

// watchdog bounds waits that end as soon as what they wait for happens.
const watchdog = 60 * time.Second

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		if abs, err := filepath.Abs(filepath.Join("..", "..", "bin", "k8s", "1.37.2")); err == nil {
			if _, err := os.Stat(filepath.Join(abs, "kube-apiserver")); err == nil {
				assets = abs
			}
		}
	}
	if assets == "" {
		fmt.Fprintln(os.Stderr, "envtest: no kube-apiserver and etcd: run `make envtest` (or set KUBEBUILDER_ASSETS)")
		return 1
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:        []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 90 * time.Second,
	}
	var err error
	cfg, err = env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := inferencev1alpha1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: client: %v\n", err)
		return 1
	}
	return m.Run()
}

// world is one test's namespace, nodes and scalers.
type world struct {
	t        *testing.T
	ns       string
	label    string // the node label of this test's nodes; its models select it
	catalog  *catalog.Kube
	activity *activity
	probe    *prober
	metrics  *metrics.Metrics
	// writer, when set, is the client scalers write models with (default k8s).
	writer client.Client
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "gw-"}}
	if err := k8s.Create(ctx, nsObj); err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, ns: nsObj.Name, label: nsObj.Name, activity: &activity{busy: map[string]string{}, used: map[string]time.Time{}},
		probe: &prober{busy: map[string]string{}}, metrics: metrics.New()}
	c, err := cache.New(cfg, withScheme(catalog.CacheOptions([]string{w.ns})))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	w.catalog, err = catalog.NewKube(cctx, c, testr.New(t))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = c.Start(cctx) }()
	go func() { defer wg.Done(); _ = w.catalog.Start(cctx) }()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		// Pods are removed at once (no kubelet would finish a graceful deletion), so no
		// other test counts them.
		var pods corev1.PodList
		_ = k8s.List(context.Background(), &pods, client.InNamespace(w.ns))
		for i := range pods.Items {
			_ = k8s.Delete(context.Background(), &pods.Items[i], client.GracePeriodSeconds(0))
		}
	})
	return w
}

func withScheme(o cache.Options) cache.Options {
	o.Scheme = scheme
	return o
}

// scaler returns a scaler of this world, as a gateway replica called identity runs it.
func (w *world) scaler(identity string, o scaling.Options, clk ...clock.WithTicker) *scaling.Scaler {
	w.t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	ctx, cancel := context.WithCancel(context.Background())
	b.StartRecordingToSink(ctx.Done())
	w.t.Cleanup(func() {
		cancel()
		b.Shutdown()
	})
	o.Namespaces = []string{w.ns}
	var c clock.WithTicker = clock.RealClock{}
	if len(clk) > 0 {
		c = clk[0]
	}
	if o.Recheck == 0 {
		o.Recheck = 50 * time.Millisecond
	}
	writer := w.writer
	if writer == nil {
		writer = k8s
	}
	return scaling.New(ctx, scaling.Deps{
		Client: writer, Reader: k8s, Recorder: b.NewRecorder(scheme, "rkllm-gateway"), Catalog: w.catalog, Activity: w.activity,
		Metrics: w.metrics, Probe: w.probe.probe, Clock: c, Log: testr.New(w.t).WithValues("gateway", identity),
		Lease: &scaling.Lease{Client: k8s, Key: client.ObjectKey{Namespace: w.ns, Name: "decisions"}, Identity: identity,
			Duration: 15 * time.Second, Retry: 20 * time.Millisecond, Clock: clock.RealClock{}},
	}, o)
}

// node creates a ready node of this world with npu units of rockchip.com/npu.
func (w *world) node(name string, npu int64) string {
	w.t.Helper()
	ctx := context.Background()
	name = w.ns + "-" + name
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"test-world": w.label}}}
	if err := k8s.Create(ctx, n); err != nil {
		w.t.Fatal(err)
	}
	// The API server taints a new node not-ready; the node lifecycle controller (not
	// running here) lifts the taint once the node is ready.
	n.Spec.Taints = nil
	if err := k8s.Update(ctx, n); err != nil {
		w.t.Fatal(err)
	}
	n.Status.Allocatable = corev1.ResourceList{inferencev1alpha1.NPUResourceName: *resource.NewQuantity(npu, resource.DecimalSI)}
	n.Status.Capacity = n.Status.Allocatable
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	if err := k8s.Status().Update(ctx, n); err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() { _ = k8s.Delete(context.Background(), n) })
	return name
}

// model creates a model of this world with spec.scaling (unless static).
func (w *world) model(name string, replicas int32, mutate ...func(*inferencev1alpha1.RKLLMModel)) *inferencev1alpha1.RKLLMModel {
	w.t.Helper()
	m := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, Name: name},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model:        inferencev1alpha1.ModelSource{URL: "https://example.org/" + name + ".rkllm"},
			Replicas:     ptr.To(replicas),
			Scaling:      &inferencev1alpha1.ScalingSpec{},
			NodeSelector: map[string]string{"test-world": w.label},
		},
	}
	for _, f := range mutate {
		f(m)
	}
	if err := k8s.Create(context.Background(), m); err != nil {
		w.t.Fatal(err)
	}
	return m
}

// scaledLongAgo marks a model as scaled up long before, past any minimum lifetime.
func scaledLongAgo(m *inferencev1alpha1.RKLLMModel) {
	m.Annotations = map[string]string{inferencev1alpha1.AnnotationScaledUpAt: time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)}
}

// pod creates a server pod of the model, bound to node ("" leaves it waiting), ready
// when ready is set, as the operator's Deployment, the scheduler and the kubelet would.
func (w *world) pod(model, node string, ready bool) *corev1.Pod {
	w.t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, GenerateName: model + "-", Labels: map[string]string{
			"app.kubernetes.io/managed-by": "rkllm-operator", "inference.rkllm.io/model": model,
			"app.kubernetes.io/name": "rkllm-server", "app.kubernetes.io/instance": model}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "server", Image: "rkllm-server",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "probes", ContainerPort: 8081}},
			Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{inferencev1alpha1.NPUResourceName: resource.MustParse("1")},
				Limits:   corev1.ResourceList{inferencev1alpha1.NPUResourceName: resource.MustParse("1")}}}}},
	}
	if err := k8s.Create(ctx, p); err != nil {
		w.t.Fatal(err)
	}
	if ready {
		p.Status.PodIP = "10.0.0.1"
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if err := k8s.Status().Update(ctx, p); err != nil {
			w.t.Fatal(err)
		}
	}
	return p
}

// unschedulable marks a pod as the scheduler does when no node has a free NPU.
func (w *world) unschedulable(p *corev1.Pod) {
	w.t.Helper()
	p.Status.Phase = corev1.PodPending
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/3 nodes are available: 3 Insufficient rockchip.com/npu."}}
	if err := k8s.Status().Update(context.Background(), p); err != nil {
		w.t.Fatal(err)
	}
}

// serve publishes a ready endpoint for the model, as the EndpointSlice controller does
// for a ready pod of its Service.
func (w *world) serve(model, addr string) {
	w.t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: w.ns, GenerateName: model + "-", Labels: map[string]string{
			discoveryv1.LabelServiceName: model, "app.kubernetes.io/managed-by": "rkllm-operator"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
	}
	if err := k8s.Create(context.Background(), s); err != nil {
		w.t.Fatal(err)
	}
}

// get reads a model.
func (w *world) get(name string) *inferencev1alpha1.RKLLMModel {
	w.t.Helper()
	m := &inferencev1alpha1.RKLLMModel{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: w.ns, Name: name}, m); err != nil {
		w.t.Fatal(err)
	}
	return m
}

// known waits until the catalog has the model (the cache has seen it).
func (w *world) known(name string) catalog.Model {
	w.t.Helper()
	var m catalog.Model
	w.eventually("the catalog to know "+name, func() bool {
		var ok bool
		m, ok = w.catalog.Get(name)
		return ok
	})
	return m
}

// events returns the messages of the events about a model, by reason.
func (w *world) events(model string) map[string][]string {
	w.t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(context.Background(), &list, client.InNamespace(w.ns)); err != nil {
		w.t.Fatal(err)
	}
	out := map[string][]string{}
	for _, e := range list.Items {
		if e.Regarding.Name == model {
			related := ""
			if e.Related != nil {
				related = " [related " + e.Related.Name + "]"
			}
			out[e.Reason] = append(out[e.Reason], e.Note+related)
		}
	}
	return out
}

func (w *world) eventually(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(watchdog)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// activity is the gateway's own requests, as the test sets them.
type activity struct {
	mu   sync.Mutex
	busy map[string]string
	used map[string]time.Time
}

func (a *activity) Busy(m string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.busy[m]
}

func (a *activity) LastUsed(m string) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used[m]
}

func (a *activity) set(m, busy string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.busy[m] = busy
}

func (a *activity) setUsed(m string, t time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.used[m] = t
}

// prober answers for the server pods, by model.
type prober struct {
	mu    sync.Mutex
	busy  map[string]string
	asked []string
}

func (p *prober) probe(_ context.Context, pod *corev1.Pod) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	model := pod.Labels["inference.rkllm.io/model"]
	p.asked = append(p.asked, model)
	return p.busy[model], nil
}

func (p *prober) set(model, busy string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.busy[model] = busy
}
