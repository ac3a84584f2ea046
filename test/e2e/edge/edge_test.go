//go:build e2e

// Package edge_test runs the chart, the operator, the device plugin and rkllm-server on
// the simulated edge cluster (test/e2e/edgecluster: a real control plane, two kwok
// RK3588 nodes and one real-kubelet node on the process runtime with the device plugin on
// a fake NPU): every value set of the chart passes server-side dry-run (ServiceMonitors
// included, against the Prometheus Operator's CRD), then the chart is installed, models
// are applied and get Ready (on the real-kubelet node, rkllm-server runs in the model's
// pod on the simulator library, with the plugin's device nodes, and answers the
// kubelet's probes), two gateway replicas activate and swap two models on that node's one
// NPU (the openai npm client included), a model's Service leads to its server (/v1/models, /rpc), the
// manager's HTTPS metrics
// answer only tokens allowed by the chart's metrics-reader role, models scale past the
// cluster's NPUs, are suspended, take a new temperature and a chart upgrade without a
// pod restarted, roll one pod at a time on a spec change (never two servers on one NPU),
// are deleted (the garbage collector removes their children), download a model file once
// per node (the node's model cache, with the download init container run for real on the
// real-kubelet node), and the chart is uninstalled while the CRD and the models stay.
// Run it with `make e2e` (root; builds everything it needs).
package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/footprint"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

const (
	release   = "rkllm-operator"
	namespace = "rkllm-operator-system"
	models    = "default"
)

// Named timeouts for a loaded 2-core machine.
const (
	readyTimeout    = 4 * time.Minute
	statusTimeout   = time.Minute
	deletionTimeout = time.Minute
)

var repoRoot = filepath.Join("..", "..", "..")

type suite struct {
	t       *testing.T
	ctx     context.Context
	c       *edgecluster.Cluster
	cl      client.Client
	helm    string
	kubectl string
	manager string
	work    string
}

func TestEdgeCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the edge cluster e2e test needs root (a private mount namespace for the kubelet and the manager)")
	}
	k8sBin := makevars.Path(t, "E2E_K8S_BIN_DIR", "e2e")
	s := &suite{t: t, helm: makevars.Path(t, "E2E_HELM", "e2e"), kubectl: filepath.Join(k8sBin, "kubectl"), manager: makevars.Path(t, "E2E_MANAGER", "e2e"), work: t.TempDir()}
	ctx, cancel := context.WithCancel(context.Background())
	if deadline, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(context.Background(), deadline.Add(-time.Minute))
	}
	defer cancel()
	s.ctx = ctx

	hostAddrs, err := footprint.Addresses()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := edgecluster.Start(ctx, ClusterOptions(t, filepath.Join(s.work, "cluster")))
	if err != nil {
		t.Fatal(err)
	}
	s.c = c
	t.Cleanup(func() { s.stopLeavingNothing(hostAddrs) })
	t.Logf("cluster up in %s", time.Since(start).Round(time.Second))
	if s.cl, err = c.ModelClient(); err != nil {
		t.Fatal(err)
	}

	s.dryRunValueSets()
	s.install()
	simModel := filepath.Join(s.work, "models", "qwen2.5-sim.rkllm")
	if err := edgecluster.WriteSimModel(simModel); err != nil {
		t.Fatal(err)
	}
	managerProc, err := c.StartManager(ctx, s.manager, namespace, release+"-controller-manager")
	if err != nil {
		t.Fatal(err)
	}

	s.chain()
	s.gatewaySwap()

	s.step("models alpha (2 replicas) and beta (1) get Ready, one pod per node")
	s.apply(model("alpha", simModel, 2))
	s.apply(model("beta", simModel, 1))
	s.waitReady("alpha")
	s.waitReady("beta")
	s.checkOnePodPerNode()
	s.checkRealNodeGotTheNPU()
	onReal := s.modelOnNode(edgecluster.KubeletNode)

	s.step("the model's Service reaches rkllm-server: /v1/models names the model, /rpc runs a prompt")
	// The served model name defaults to the RKLLMModel's name (spec.servedModelName).
	s.checkServiceServes(onReal, onReal)

	s.step("the manager's HTTPS /metrics answers a token bound to the chart's metrics-reader role, and refuses others")
	s.checkSecureMetrics(managerProc)

	s.step("scaling alpha to 3 leaves its third pod Pending, with the scheduler's reason in the model's status")
	if _, err := c.Run(ctx, nil, s.kubectl, "scale", "rkllmmodel/alpha", "--replicas=3", "-n", models); err != nil {
		t.Fatal(err)
	}
	m := s.waitModel("alpha", "Unschedulable for lack of NPUs", func(m *inferencev1alpha1.RKLLMModel) bool {
		r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
		return m.Generation == m.Status.ObservedGeneration && r != nil && r.Status == metav1.ConditionFalse &&
			r.Reason == inferencev1alpha1.ReasonUnschedulable && strings.Contains(r.Message, "Insufficient rockchip.com/npu")
	})
	t.Logf("alpha: %s", edgecluster.DescribeModel(m))

	s.step("suspending beta frees its NPU: beta has no pods, alpha gets Ready with 3")
	s.patch("beta", `{"spec":{"suspend":true}}`)
	s.waitModel("beta", "Suspended", func(m *inferencev1alpha1.RKLLMModel) bool {
		return m.Status.Phase == inferencev1alpha1.PhaseSuspended
	})
	s.waitNoPods("beta")
	s.waitReady("alpha")

	s.step("a new temperature reaches alpha's server.json without restarting a pod (rkllm-server reloads it)")
	uids, images := s.podUIDs("alpha")
	s.patch("alpha", `{"spec":{"parameters":{"temperature":"0.5"}}}`)
	s.waitReady("alpha")
	s.waitConfig("alpha", `"temperature": "0.5"`)
	s.checkSamePods("alpha", uids, images)

	s.step("upgrading the chart (new chart version, new default server image) updates the CRD; the restarted manager restarts no server")
	s.upgrade()
	crd, err := c.Run(ctx, nil, s.kubectl, "get", "crd", "rkllmmodels.inference.rkllm.io", "-o", `jsonpath={.metadata.labels.helm\.sh/chart} {.metadata.annotations.helm\.sh/resource-policy}`)
	if err != nil {
		t.Fatal(err)
	}
	if crd != "rkllm-operator-0.1.1 keep" {
		t.Errorf("after the upgrade the CRD has chart label and policy %q, want %q", crd, "rkllm-operator-0.1.1 keep")
	}
	if err := managerProc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.Forget(managerProc.Process)
	if managerProc, err = c.StartManager(ctx, s.manager, namespace, release+"-controller-manager"); err != nil {
		t.Fatal(err)
	}
	// A spec change the server takes while running: the upgraded manager reconciles
	// this generation (Ready waits for it) and keeps the pods and their image.
	s.patch("alpha", `{"spec":{"parameters":{"topK":20}}}`)
	s.waitReady("alpha")
	s.waitConfig("alpha", `"top-k": 20`)
	s.checkSamePods("alpha", uids, images)

	s.step("a new maxContextLen rolls alpha one pod at a time onto the upgraded image: never two servers on one NPU, never two replicas down")
	oldHash := s.podHashes("alpha")
	rec := s.recordPods("alpha")
	s.patch("alpha", `{"spec":{"parameters":{"maxContextLen":2048}}}`)
	s.waitRolledOver("alpha", oldHash)
	rec.stop()
	rec.checkRolling(t, oldHash, 3)
	pods, err := c.ModelPods(ctx, models, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if img := p.Spec.Containers[0].Image; img != "ghcr.io/rkllm-operator/rkllm-server:0.1.1-e2e" {
			t.Errorf("pod %s runs %s after a spec change, want the upgraded default image", p.Name, img)
		}
	}
	if pdb, err := c.Client.PolicyV1().PodDisruptionBudgets(models).Get(ctx, "alpha", metav1.GetOptions{}); err != nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("alpha's PodDisruptionBudget: %v %v, want maxUnavailable 1", pdb, err)
	}
	cm, err := c.Client.CoreV1().ConfigMaps(models).Get(ctx, "alpha-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg := cm.Data["server.json"]; !strings.Contains(cfg, `"max-context-len": 2048`) || !strings.Contains(cfg, `"temperature": "0.5"`) {
		t.Errorf("alpha's server.json does not carry the new parameters:\n%s", cfg)
	}

	s.step("deleting alpha: the garbage collector removes its Deployment, ReplicaSets, pods, PodDisruptionBudget, Service and ConfigMap")
	if err := s.cl.Delete(ctx, &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: "alpha"}}); err != nil {
		t.Fatal(err)
	}
	s.waitChildrenGone("alpha")

	s.checkNodeCache(simModel)

	s.step("uninstalling the chart keeps the CRD and the models")
	if err := managerProc.Stop(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.Forget(managerProc.Process)
	if _, err := c.Run(ctx, nil, s.helm, "uninstall", release, "-n", namespace, "--wait"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.AppsV1().DaemonSets(namespace).Get(ctx, release+"-device-plugin", metav1.GetOptions{}); !edgecluster.IsNotFound(err) {
		t.Errorf("the device plugin DaemonSet after uninstall: %v, want NotFound", err)
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Get(ctx, release+"-manager-role", metav1.GetOptions{}); !edgecluster.IsNotFound(err) {
		t.Errorf("the manager's ClusterRole after uninstall: %v, want NotFound", err)
	}
	if _, err := c.Run(ctx, nil, s.kubectl, "get", "crd", "rkllmmodels.inference.rkllm.io"); err != nil {
		t.Errorf("the CRD is gone after uninstall (crds.keep): %v", err)
	}
	var beta inferencev1alpha1.RKLLMModel
	if err := s.cl.Get(ctx, client.ObjectKey{Namespace: models, Name: "beta"}, &beta); err != nil {
		t.Errorf("model beta after uninstall: %v", err)
	}

	s.step("moving from kustomize to Helm (docs/install.md): helm install adopts what `kubectl apply -k config/default` made, the workloads are kept, not replaced")
	s.kustomizeToHelm()
	t.Logf("e2e done in %s", time.Since(start).Round(time.Second))
}

// kustomizeToHelm follows docs/install.md: config/default applied, its objects annotated
// and labelled for the release, then helm install. Helm cannot change an immutable
// selector, so an install that succeeds with the Deployment's and the DaemonSet's UIDs
// unchanged shows the chart's objects are the ones kustomize made.
func (s *suite) kustomizeToHelm() {
	kustomization := filepath.Join(repoRoot, "config", "default")
	run := func(stdin []byte, bin string, args ...string) []byte {
		out, err := s.c.Run(s.ctx, stdin, bin, args...)
		if err != nil {
			s.t.Fatal(err)
		}
		return []byte(out)
	}
	// The CRD is the one the uninstalled release kept; kustomize takes it over.
	run(nil, s.kubectl, "apply", "--server-side", "--force-conflicts", "-k", kustomization)
	before := s.workloadUIDs()
	// kubectl annotate and label take no -k: the rendered objects come on stdin.
	objects := run(nil, s.kubectl, "kustomize", kustomization)
	run(objects, s.kubectl, "annotate", "-f", "-", "--overwrite",
		"meta.helm.sh/release-name="+release, "meta.helm.sh/release-namespace="+namespace)
	run(objects, s.kubectl, "label", "-f", "-", "--overwrite", "app.kubernetes.io/managed-by=Helm")
	run(nil, s.helm, "install", release, filepath.Join(repoRoot, "charts", "rkllm-operator"), "-n", namespace)
	if after := s.workloadUIDs(); after != before {
		s.t.Errorf("helm install replaced workloads that kubectl apply -k made: UIDs %s before, %s after", before, after)
	}
	run(nil, s.helm, "uninstall", release, "-n", namespace, "--wait")
}

// workloadUIDs are the UIDs of the manager's Deployment and the plugin's DaemonSet.
func (s *suite) workloadUIDs() string {
	d, err := s.c.Client.AppsV1().Deployments(namespace).Get(s.ctx, release+"-controller-manager", metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	ds, err := s.c.Client.AppsV1().DaemonSets(namespace).Get(s.ctx, release+"-device-plugin", metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	return string(d.UID) + " " + string(ds.UID)
}

// ClusterOptions are the edge cluster's binaries from the Makefile (make e2e).
func ClusterOptions(t *testing.T, work string) edgecluster.Options {
	return edgecluster.Options{
		K8sBinDir: makevars.Path(t, "E2E_K8S_BIN_DIR", "e2e"), Kwokctl: makevars.Path(t, "E2E_KWOKCTL", "e2e"), Kwok: makevars.Path(t, "E2E_KWOK", "e2e"),
		DevicePlugin: makevars.Path(t, "E2E_DEVICE_PLUGIN", "e2e"), ProcessCRI: makevars.Path(t, "E2E_PROCESS_CRI", "e2e"),
		CNIBinDir: makevars.Path(t, "E2E_CNI_BIN_DIR", "e2e"), Server: makevars.Path(t, "E2E_SERVER", "e2e"),
		SimLib: makevars.Path(t, "E2E_SIM_LIB", "e2e"), Manager: makevars.Path(t, "E2E_MANAGER", "e2e"),
		WorkDir: work, Progress: func(f string, a ...any) { t.Logf("starting "+f, a...) },
	}
}

func (s *suite) step(msg string) {
	s.t.Helper()
	s.t.Logf("%s STEP: %s", time.Now().Format("15:04:05"), msg)
}

// dryRunValueSets renders the chart with each value set in ci/ (and config/default with
// kustomize) and has the API server validate every object (server-side dry-run). The
// Prometheus Operator's ServiceMonitor CRD is installed first and the chart rendered with
// its API, so the ServiceMonitors are validated against the real schema too.
func (s *suite) dryRunValueSets() {
	s.step("every chart value set and config/default pass server-side dry-run, ServiceMonitors included")
	// rknpu-system: full-values.yaml puts the device plugin there.
	for _, ns := range []string{namespace, "models-a", "models-b", "rknpu-system"} {
		if _, err := s.c.Client.CoreV1().Namespaces().Create(s.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			s.t.Fatal(err)
		}
	}
	s.installServiceMonitorCRD()
	sets, _ := filepath.Glob(filepath.Join(repoRoot, "charts", "rkllm-operator", "ci", "*.yaml"))
	if len(sets) < 3 {
		s.t.Fatalf("value sets: %v", sets)
	}
	type valueSet struct {
		name string
		args []string
	}
	var cases []valueSet
	for _, set := range sets {
		cases = append(cases, valueSet{filepath.Base(set), []string{"-f", set}})
	}
	// monitoring-values.yaml has the secure metrics endpoint's ServiceMonitor (a token
	// Secret, verified TLS) and the model servers' NetworkPolicy; full-values.yaml the
	// plain one.
	monitors := 0
	for _, c := range cases {
		args := append([]string{"template", release, filepath.Join(repoRoot, "charts", "rkllm-operator"), "-n", namespace,
			"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}, c.args...)
		manifest, err := s.c.Run(s.ctx, nil, s.helm, args...)
		if err != nil {
			s.t.Fatal(err)
		}
		out, err := s.c.Run(s.ctx, []byte(manifest), s.kubectl, "apply", "--server-side", "--dry-run=server", "-f", "-")
		if err != nil {
			s.t.Errorf("%s: %v", c.name, err)
			continue
		}
		n := strings.Count(out, "servicemonitor.monitoring.coreos.com/")
		monitors += n
		s.t.Logf("%s: %d objects valid, %d of them ServiceMonitors", c.name, strings.Count(out, "(server dry run)"), n)
	}
	if monitors < 4 {
		s.t.Errorf("the value sets rendered %d ServiceMonitors; want at least 4 (manager, device plugin and model servers, plain and secure metrics)", monitors)
	}
	kustomized, err := s.c.Run(s.ctx, nil, s.kubectl, "kustomize", filepath.Join(repoRoot, "config", "default"))
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.c.Run(s.ctx, []byte(kustomized), s.kubectl, "apply", "--server-side", "--dry-run=server", "-f", "-"); err != nil {
		s.t.Errorf("config/default: %v", err)
	}
}

// installServiceMonitorCRD installs the ServiceMonitor CRD (make servicemonitor-crd
// generates it from the Prometheus Operator's API types) and checks that the API server
// validates ServiceMonitors with it: a misspelt endpoint field is refused.
func (s *suite) installServiceMonitorCRD() {
	s.t.Helper()
	if _, err := s.c.Run(s.ctx, nil, s.kubectl, "apply", "--server-side", "-f", makevars.Path(s.t, "E2E_SERVICEMONITOR_CRD", "e2e")); err != nil {
		s.t.Fatal(err)
	}
	// Not kubectl wait: it fails at once on a CRD whose status has no conditions yet.
	if err := edgecluster.Poll(s.ctx, statusTimeout, "the ServiceMonitor CRD to be Established", func(ctx context.Context) (bool, string, error) {
		out, err := s.c.Run(ctx, nil, s.kubectl, "get", "crd", "servicemonitors.monitoring.coreos.com", "-o", `jsonpath={.status.conditions[?(@.type=="Established")].status}`)
		return err == nil && out == "True", out, nil
	}); err != nil {
		s.t.Fatal(err)
	}
	const misspelt = `apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: misspelt
  namespace: ` + namespace + `
spec:
  selector: {}
  endpoints:
  - port: https
    schem: https
`
	_, err := s.c.Run(s.ctx, []byte(misspelt), s.kubectl, "apply", "--server-side", "--dry-run=server", "-f", "-")
	if err == nil || !strings.Contains(err.Error(), "schem") {
		s.t.Fatalf("a ServiceMonitor with the misspelt field spec.endpoints[0].schem passed dry-run (%v): the CRD does not validate", err)
	}
}

// clusterValues are what the simulated cluster needs: no manager pod and no gateway pod
// (they need the API server's Service address, which no node here routes; they run as
// local processes with their Deployment's arguments and ServiceAccount, the gateway in
// the real-kubelet node's network), and the plugin's
// DaemonSet on the kwok nodes labelled as NPU nodes (the real-kubelet node has its
// plugin already, run by the cluster on the fake NPU tree).
const clusterValues = `manager:
  replicas: 0
gateway:
  replicas: 0
devicePlugin:
  nodeSelector:
    kubernetes.io/arch: null
    rockchip.com/npu.present: "true"
    type: kwok
`

func (s *suite) install() {
	s.step("helm install")
	values := filepath.Join(s.work, "cluster-values.yaml")
	if err := os.WriteFile(values, []byte(clusterValues), 0o600); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.c.Run(s.ctx, nil, s.helm, "install", release, filepath.Join(repoRoot, "charts", "rkllm-operator"), "-n", namespace, "-f", values); err != nil {
		s.t.Fatal(err)
	}
	err := edgecluster.Poll(s.ctx, statusTimeout, "the device plugin DaemonSet on the 2 kwok NPU nodes", func(ctx context.Context) (bool, string, error) {
		ds, err := s.c.Client.AppsV1().DaemonSets(namespace).Get(ctx, release+"-device-plugin", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		st := ds.Status
		return st.DesiredNumberScheduled == 2 && st.NumberReady == 2, fmt.Sprintf("desired %d, ready %d", st.DesiredNumberScheduled, st.NumberReady), nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

func (s *suite) upgrade() {
	// A copy of the chart with the next chart version, as a release would have.
	chart := filepath.Join(s.work, "chart-next", "rkllm-operator")
	if err := os.MkdirAll(filepath.Dir(chart), 0o750); err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.c.Run(s.ctx, nil, "cp", "-r", filepath.Join(repoRoot, "charts", "rkllm-operator"), filepath.Dir(chart)); err != nil {
		s.t.Fatal(err)
	}
	chartYAML := filepath.Join(chart, "Chart.yaml")
	data, err := os.ReadFile(chartYAML)
	if err != nil {
		s.t.Fatal(err)
	}
	next := regexp.MustCompile(`(?m)^version: .*$`).ReplaceAll(data, []byte("version: 0.1.1"))
	if err := os.WriteFile(chartYAML, next, 0o600); err != nil {
		s.t.Fatal(err)
	}
	values := filepath.Join(s.work, "cluster-values.yaml")
	if _, err := s.c.Run(s.ctx, nil, s.helm, "upgrade", release, chart, "-n", namespace, "-f", values,
		"--set", "server.image.tag=0.1.1-e2e"); err != nil {
		s.t.Fatal(err)
	}
	d, err := s.c.Client.AppsV1().Deployments(namespace).Get(s.ctx, release+"-controller-manager", metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	if args := strings.Join(d.Spec.Template.Spec.Containers[0].Args, " "); !strings.Contains(args, "--default-server-image=ghcr.io/rkllm-operator/rkllm-server:0.1.1-e2e") {
		s.t.Errorf("after the upgrade the manager's args are %s", args)
	}
}

// model is a model served from a simulator file on the node, with the default security
// (nothing of the host in the pod spec but that file).
func model(name, file string, replicas int32) *inferencev1alpha1.RKLLMModel {
	return &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: name},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model:    inferencev1alpha1.ModelSource{HostPath: file},
			Replicas: &replicas,
			Resources: &inferencev1alpha1.Resources{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
			},
		},
	}
}

func (s *suite) apply(m *inferencev1alpha1.RKLLMModel) {
	s.t.Helper()
	if err := s.cl.Create(s.ctx, m); err != nil {
		s.t.Fatal(err)
	}
}

func (s *suite) patch(name, patch string) {
	s.t.Helper()
	m := &inferencev1alpha1.RKLLMModel{ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: name}}
	if err := s.cl.Patch(s.ctx, m, client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
		s.t.Fatal(err)
	}
}

func (s *suite) waitModel(name, what string, done func(*inferencev1alpha1.RKLLMModel) bool) *inferencev1alpha1.RKLLMModel {
	s.t.Helper()
	m, err := edgecluster.WaitModel(s.ctx, s.cl, readyTimeout, models, name, what, done)
	if err != nil {
		pods, _ := s.c.ModelPods(s.ctx, models, name)
		s.t.Fatalf("%v\npods:\n%s", err, edgecluster.DescribePods(pods))
	}
	return m
}

func (s *suite) waitReady(name string) {
	s.t.Helper()
	m := s.waitModel(name, "Ready", edgecluster.IsReady)
	s.t.Logf("%s: %s", name, edgecluster.DescribeModel(m))
}

func (s *suite) checkOnePodPerNode() {
	s.t.Helper()
	var nodes []string
	for _, name := range []string{"alpha", "beta"} {
		pods, err := s.c.ModelPods(s.ctx, models, name)
		if err != nil {
			s.t.Fatal(err)
		}
		for _, p := range pods {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	sort.Strings(nodes)
	want := []string{edgecluster.KubeletNode, edgecluster.KwokNode1, edgecluster.KwokNode2}
	sort.Strings(want)
	if strings.Join(nodes, ",") != strings.Join(want, ",") {
		s.t.Errorf("model pods on nodes %v, want one on each of %v", nodes, want)
	}
}

// modelOnNode names the model whose pod runs on node.
func (s *suite) modelOnNode(node string) string {
	s.t.Helper()
	pods, err := s.c.Client.CoreV1().Pods(models).List(s.ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		s.t.Fatal(err)
	}
	for _, p := range pods.Items {
		if m := p.Labels["inference.rkllm.io/model"]; m != "" {
			return m
		}
	}
	s.t.Fatalf("no model pod on %s", node)
	return ""
}

// checkRealNodeGotTheNPU: the server container running on the real-kubelet node has
// the device plugin's device nodes and variables (asked inside it, through the runtime).
func (s *suite) checkRealNodeGotTheNPU() {
	s.t.Helper()
	pods, err := s.c.Client.CoreV1().Pods(models).List(s.ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + edgecluster.KubeletNode})
	if err != nil || len(pods.Items) != 1 {
		s.t.Fatalf("pods on %s: %v (%d)", edgecluster.KubeletNode, err, len(pods.Items))
	}
	out, code, err := s.c.Exec(s.ctx, models, pods.Items[0].Name, "server", "sh", "-c", "env | grep ^RKNPU_ | sort; ls /dev/dri")
	if err != nil || code != 0 || !strings.Contains(out, "RKNPU_SOC=rk3588") || !strings.Contains(out, "RKNPU_UNIT_IDS=npu0") || !strings.Contains(out, "renderD129") {
		s.t.Errorf("in the server container on %s: %v, exit %d:\n%s\nwant the plugin's RKNPU_* and /dev/dri/renderD129", edgecluster.KubeletNode, err, code, out)
	}
}

// checkServiceServes sends requests to model name's Service, resolved to its pod on
// the real-kubelet node (where rkllm-server answers on the simulator library): the
// OpenAI-compatible model list names the model by its file, and a JSON-RPC prompt runs.
func (s *suite) checkServiceServes(name, wantID string) {
	s.t.Helper()
	addr, err := s.c.ServiceEndpoint(s.ctx, models, name, "http", edgecluster.KubeletNode)
	if err != nil {
		s.t.Fatal(err)
	}
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}
	if err := s.httpJSON(http.MethodGet, "http://"+addr+"/v1/models", "", &list); err != nil {
		s.t.Fatal(err)
	}
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != wantID || list.Data[0].Object != "model" {
		s.t.Errorf("GET /v1/models through Service %s (%s) = %+v; want a list with one model, id %q", name, addr, list, wantID)
	}
	var rpc struct {
		Result *struct {
			Text         string `json:"text"`
			TokenCount   int    `json:"token_count"`
			FinishReason string `json:"finish_reason"`
		} `json:"result"`
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	req := `{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"input":{"role":"user","input_type":"RKLLM_INPUT_PROMPT","prompt_input":"Hello from the e2e test"}}}`
	if err := s.httpJSON(http.MethodPost, "http://"+addr+"/rpc", req, &rpc); err != nil {
		s.t.Fatal(err)
	}
	if rpc.Error != nil || rpc.Result == nil || rpc.Result.TokenCount == 0 || rpc.Result.Text == "" || rpc.Result.FinishReason == "" {
		s.t.Errorf("rkllm.run through Service %s (%s): result %+v, error %+v; want generated text", name, addr, rpc.Result, rpc.Error)
	}
}

// httpJSON sends a request (a JSON body unless body is empty) and decodes a 200 answer.
func (s *suite) httpJSON(method, url, body string, into any) error {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(s.ctx, method, url, r)
	if err != nil {
		return err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.c.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, data)
	}
	if err := json.Unmarshal(data, into); err != nil {
		return fmt.Errorf("%s %s: decoding %s: %w", method, url, data, err)
	}
	return nil
}

// checkSecureMetrics scrapes the manager's secure metrics endpoint as Prometheus would:
// with the token of a ServiceAccount bound to the chart's metrics-reader ClusterRole it
// gets the controller's metrics; an unbound ServiceAccount's token gets 403 and no token
// 401 (the manager asks the API server: TokenReview, SubjectAccessReview).
func (s *suite) checkSecureMetrics(m *edgecluster.Manager) {
	s.t.Helper()
	const scraper, stranger = "e2e-metrics-scraper", "e2e-stranger"
	strangerToken, err := s.c.ServiceAccountToken(s.ctx, namespace, stranger)
	if err != nil {
		s.t.Fatal(err)
	}
	if code, body, err := m.GetMetrics(s.ctx, strangerToken); err != nil || code != http.StatusForbidden {
		s.t.Errorf("GET /metrics with an unbound ServiceAccount's token: %d %v (%.200s); want 403", code, err, body)
	}
	if code, body, err := m.GetMetrics(s.ctx, ""); err != nil || code != http.StatusUnauthorized {
		s.t.Errorf("GET /metrics without a token: %d %v (%.200s); want 401", code, err, body)
	}

	scraperToken, err := s.c.ServiceAccountToken(s.ctx, namespace, scraper)
	if err != nil {
		s.t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: scraper},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: release + "-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: scraper}},
	}
	if _, err := s.c.Client.RbacV1().ClusterRoleBindings().Create(s.ctx, binding, metav1.CreateOptions{}); err != nil {
		s.t.Fatal(err)
	}
	if err := s.c.WaitAllowed(s.ctx, namespace, scraper, "/metrics"); err != nil {
		s.t.Fatal(err)
	}
	code, body, err := m.GetMetrics(s.ctx, scraperToken)
	if err != nil || code != http.StatusOK {
		s.t.Fatalf("GET /metrics with a metrics-reader token: %d %v (%.300s); want 200", code, err, body)
	}
	// The models have been reconciled, so the controller's count is above zero.
	reconciles := regexp.MustCompile(`(?m)^controller_runtime_reconcile_total\{controller="rkllmmodel",result="[a-z_]+"\} [1-9]`)
	if !reconciles.MatchString(body) {
		s.t.Errorf("the manager's metrics have no controller_runtime_reconcile_total above 0 for the rkllmmodel controller:\n%.3000s", body)
	}
}

func (s *suite) waitNoPods(name string) {
	s.t.Helper()
	err := edgecluster.Poll(s.ctx, deletionTimeout, "model "+name+" to have no pods", func(ctx context.Context) (bool, string, error) {
		pods, err := s.c.ModelPods(ctx, models, name)
		if err != nil {
			return false, err.Error(), nil
		}
		return len(pods) == 0, edgecluster.DescribePods(pods), nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

const hashAnnotation = "inference.rkllm.io/rollout-hash"

func (s *suite) podHashes(name string) string {
	s.t.Helper()
	pods, err := s.c.ModelPods(s.ctx, models, name)
	if err != nil || len(pods) == 0 {
		s.t.Fatalf("pods of %s: %v (%d)", name, err, len(pods))
	}
	return pods[0].Annotations[hashAnnotation]
}

// podUIDs returns the UIDs and images of a model's pods.
func (s *suite) podUIDs(name string) (map[string]string, []string) {
	s.t.Helper()
	pods, err := s.c.ModelPods(s.ctx, models, name)
	if err != nil || len(pods) == 0 {
		s.t.Fatalf("pods of %s: %v (%d)", name, err, len(pods))
	}
	uids := map[string]string{}
	var images []string
	for _, p := range pods {
		uids[p.Name] = string(p.UID)
		images = append(images, p.Spec.Containers[0].Image)
	}
	sort.Strings(images)
	return uids, images
}

// checkSamePods checks that a model still has exactly the pods it had, with the same
// images: nothing was restarted.
func (s *suite) checkSamePods(name string, uids map[string]string, images []string) {
	s.t.Helper()
	now, nowImages := s.podUIDs(name)
	if !reflect.DeepEqual(now, uids) || !reflect.DeepEqual(nowImages, images) {
		s.t.Errorf("%s's pods were replaced: before %v %v, now %v %v", name, uids, images, now, nowImages)
	}
}

// waitConfig waits until a model's server.json contains want.
func (s *suite) waitConfig(name, want string) {
	s.t.Helper()
	err := edgecluster.Poll(s.ctx, statusTimeout, name+"'s server.json to contain "+want, func(ctx context.Context) (bool, string, error) {
		cm, err := s.c.Client.CoreV1().ConfigMaps(models).Get(ctx, name+"-config", metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return strings.Contains(cm.Data["server.json"], want), cm.Data["server.json"], nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

func (s *suite) waitRolledOver(name, oldHash string) {
	s.t.Helper()
	s.waitModel(name, "Ready on the new spec", func(m *inferencev1alpha1.RKLLMModel) bool {
		if !edgecluster.IsReady(m) {
			return false
		}
		pods, err := s.c.ModelPods(s.ctx, models, name)
		if err != nil || len(pods) != int(m.Spec.GetReplicas()) {
			return false
		}
		for _, p := range pods {
			if p.Annotations[hashAnnotation] == oldHash || p.DeletionTimestamp != nil {
				return false
			}
		}
		return true
	})
}

// podRecorder records a model's pod events from a watch.
type podRecorder struct {
	w      watch.Interface
	wg     sync.WaitGroup
	mu     sync.Mutex
	events []watch.Event
}

func (s *suite) recordPods(name string) *podRecorder {
	s.t.Helper()
	w, err := s.c.Client.CoreV1().Pods(models).Watch(s.ctx, metav1.ListOptions{LabelSelector: "inference.rkllm.io/model=" + name})
	if err != nil {
		s.t.Fatal(err)
	}
	r := &podRecorder{w: w}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for ev := range w.ResultChan() {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *podRecorder) stop() { r.w.Stop(); r.wg.Wait() }

// checkRolling replays the events of a rollout from oldHash: at no moment may a node hold
// two live pods of the model (a pod is live from its scheduling until it is gone or has
// ended, terminating included: its server may still hold the NPU), and once the rollout
// has begun at most one of the replicas may be unready.
func (r *podRecorder) checkRolling(t *testing.T, oldHash string, replicas int) {
	t.Helper()
	live := map[string]*corev1.Pod{}
	begun, sawNew := false, false
	for _, ev := range r.events {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			continue
		}
		terminal := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
		if ev.Type == watch.Deleted || terminal {
			delete(live, p.Name)
		} else {
			live[p.Name] = p
		}
		isNew := p.Annotations[hashAnnotation] != oldHash
		sawNew = sawNew || isNew
		begun = begun || isNew || p.DeletionTimestamp != nil
		perNode := map[string][]string{}
		ready := 0
		for _, q := range live {
			if q.Spec.NodeName != "" {
				perNode[q.Spec.NodeName] = append(perNode[q.Spec.NodeName], q.Name)
			}
			if q.DeletionTimestamp == nil && podReady(q) {
				ready++
			}
		}
		for node, names := range perNode {
			if len(names) > 1 {
				sort.Strings(names)
				t.Errorf("after %s of %s, node %s holds pods %v: two servers on one NPU", ev.Type, p.Name, node, names)
			}
		}
		if begun && ready < replicas-1 {
			t.Errorf("after %s of %s only %d of %d replicas are ready: more than one down during the rollout", ev.Type, p.Name, ready, replicas)
		}
	}
	if !sawNew {
		t.Error("no pod of the new spec was seen during the rollout")
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (s *suite) waitChildrenGone(name string) {
	s.t.Helper()
	sel := metav1.ListOptions{LabelSelector: "inference.rkllm.io/model=" + name}
	err := edgecluster.Poll(s.ctx, deletionTimeout, "the garbage collector to remove "+name+"'s children", func(ctx context.Context) (bool, string, error) {
		var left []string
		if l, err := s.c.Client.AppsV1().Deployments(models).List(ctx, sel); err == nil && len(l.Items) > 0 {
			left = append(left, fmt.Sprintf("%d Deployments", len(l.Items)))
		}
		if l, err := s.c.Client.AppsV1().ReplicaSets(models).List(ctx, sel); err == nil && len(l.Items) > 0 {
			left = append(left, fmt.Sprintf("%d ReplicaSets", len(l.Items)))
		}
		if l, err := s.c.Client.CoreV1().Pods(models).List(ctx, sel); err == nil && len(l.Items) > 0 {
			left = append(left, fmt.Sprintf("%d pods", len(l.Items)))
		}
		if _, err := s.c.Client.CoreV1().Services(models).Get(ctx, name, metav1.GetOptions{}); !edgecluster.IsNotFound(err) {
			left = append(left, "the Service")
		}
		if _, err := s.c.Client.PolicyV1().PodDisruptionBudgets(models).Get(ctx, name, metav1.GetOptions{}); !edgecluster.IsNotFound(err) {
			left = append(left, "the PodDisruptionBudget")
		}
		if _, err := s.c.Client.CoreV1().ConfigMaps(models).Get(ctx, name+"-config", metav1.GetOptions{}); !edgecluster.IsNotFound(err) {
			left = append(left, "the ConfigMap")
		}
		return len(left) == 0, "left: " + strings.Join(left, ", "), nil
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

func dumpLogs(t *testing.T, dir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		t.Logf("--- last lines of %s:\n%s", f, data)
	}
}

// stopLeavingNothing stops the cluster and checks that nothing of the real-kubelet node
// is left: no process in, and no handle on, a namespace of the node or of a pod still on
// it when it stopped; no mount under the cluster's folder; no interface or address on
// the host that was not there before (hostAddrs).
func (s *suite) stopLeavingNothing(hostAddrs map[string]bool) {
	t, c := s.t, s.c
	nss, err := footprint.Namespaces(c.Node().Runtime.PID)
	if err != nil {
		t.Errorf("the node's namespaces: %v", err)
	} else if len(footprint.Left(nss)) == 0 {
		t.Errorf("nothing holds the node's namespaces %v while it runs: the check below would see nothing", nss)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("stopping the cluster: %v", err)
	}
	if left := footprint.Left(nss, c.WorkDir); len(left) > 0 {
		t.Errorf("after Stop, the real-kubelet node left:\n%s", strings.Join(left, "\n"))
	}
	if added, err := footprint.NewAddresses(hostAddrs); err != nil || len(added) > 0 {
		t.Errorf("after Stop, the host has interfaces or addresses it had not before: %v %v", added, err)
	}
	if t.Failed() {
		dumpLogs(t, c.LogDir())
	}
}
