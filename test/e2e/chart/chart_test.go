//go:build e2e

// Package chart_test checks the Helm chart without a cluster: helm lint is clean, the CRD
// and the manager's RBAC rules are exactly what controller-gen generated into config/, the
// schema rejects misspelt values, rendering is deterministic, names and labels are valid
// for any release name, a stock helm renders it, the ServiceMonitors appear only with
// their API and use current fields, and the chart renders the same objects as
// config/default (kustomize), compared whole; and the images build what
// `make build-arm64` cross-compiles. The cluster
// e2e (test/e2e/edge) applies the rendered value sets with
// server-side dry-run. Run with `make test-chart` (or `make e2e`), which builds helm,
// kubectl and the ServiceMonitor CRD and sets E2E_HELM, E2E_KUBECTL and
// E2E_SERVICEMONITOR_CRD.
package chart_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

const (
	release   = "rkllm-operator"
	namespace = "rkllm-operator-system"
)

// repoRoot is the repository's top folder (tests run in their package folder).
var repoRoot = filepath.Join("..", "..", "..")

var chartDir = filepath.Join(repoRoot, "charts", "rkllm-operator")

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...) //nolint:gosec // test tools from the Makefile
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// render runs helm template with the given extra arguments.
func render(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, makevars.Path(t, "E2E_HELM", "test-chart"), append([]string{"template", release, chartDir, "--namespace", namespace}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// decode splits a multi-document YAML stream into objects.
func decode(t *testing.T, stream string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if err == io.EOF {
				return objs
			}
			t.Fatalf("decoding rendered YAML: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

func mustFind(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("no %s %s in the rendered chart", kind, name)
	}
	return o
}

func readObjects(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, string(data))
}

func TestLint(t *testing.T) {
	for _, values := range valueSets(t) {
		out, err := run(t, makevars.Path(t, "E2E_HELM", "test-chart"), "lint", "--strict", chartDir, "-f", values)
		if err != nil {
			t.Fatalf("helm lint with %s: %v\n%s", values, err, out)
		}
		if strings.Contains(out, "[WARNING]") || strings.Contains(out, "[ERROR]") {
			t.Errorf("helm lint with %s is not clean:\n%s", values, out)
		}
	}
}

// valueSets are the chart's ci/*.yaml files.
func valueSets(t *testing.T) []string {
	t.Helper()
	sets, err := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if err != nil || len(sets) < 3 {
		t.Fatalf("value sets in %s/ci: %v %v", chartDir, sets, err)
	}
	return sets
}

// chartOnlyCRDMetadata removes what the chart adds to a generated CRD.
func chartOnlyCRDMetadata(crd *unstructured.Unstructured) *unstructured.Unstructured {
	c := crd.DeepCopy()
	ann := c.GetAnnotations()
	delete(ann, "helm.sh/resource-policy")
	c.SetAnnotations(ann)
	c.SetLabels(nil)
	return c
}

// crdDiff says how the chart's CRD differs from the generated one, or "" when equal.
func crdDiff(chart, generated *unstructured.Unstructured) string {
	got := chartOnlyCRDMetadata(chart).Object
	want := generated.Object
	if reflect.DeepEqual(got, want) {
		return ""
	}
	var diffs []string
	for _, key := range []string{"apiVersion", "kind", "metadata", "spec"} {
		if !reflect.DeepEqual(got[key], want[key]) {
			diffs = append(diffs, key)
		}
	}
	return "the chart's CRD differs from config/crd/bases in " + strings.Join(diffs, ", ") + "; run `make manifests` and commit"
}

func TestCRDEqualsGenerated(t *testing.T) {
	bases, err := filepath.Glob(filepath.Join(repoRoot, "config", "crd", "bases", "*.yaml"))
	if err != nil || len(bases) == 0 {
		t.Fatalf("generated CRDs: %v %v", bases, err)
	}
	objs := decode(t, render(t))
	for _, base := range bases {
		generated := readObjects(t, base)[0]
		chart := mustFind(t, objs, "CustomResourceDefinition", generated.GetName())
		if d := crdDiff(chart, generated); d != "" {
			t.Error(d)
		}
		if got := chart.GetAnnotations()["helm.sh/resource-policy"]; got != "keep" {
			t.Errorf("CRD annotation helm.sh/resource-policy = %q, want keep (crds.keep defaults to true)", got)
		}

		// The comparison catches a stale chart: change one description in the generated
		// CRD, as a regenerated API would, and it must report the difference.
		stale := generated.DeepCopy()
		versions, _, _ := unstructured.NestedSlice(stale.Object, "spec", "versions")
		v0 := versions[0].(map[string]any)
		if err := unstructured.SetNestedField(v0, "changed by a newer API", "schema", "openAPIV3Schema", "description"); err != nil {
			t.Fatal(err)
		}
		_ = unstructured.SetNestedSlice(stale.Object, versions, "spec", "versions")
		if d := crdDiff(chart, stale); !strings.Contains(d, "spec") {
			t.Errorf("a changed generated CRD was not reported as stale (diff %q)", d)
		}
	}

	noKeep := decode(t, render(t, "--set", "crds.keep=false"))
	for _, o := range noKeep {
		if o.GetKind() == "CustomResourceDefinition" {
			if _, ok := o.GetAnnotations()["helm.sh/resource-policy"]; ok {
				t.Error("crds.keep=false still renders helm.sh/resource-policy")
			}
		}
	}
	for _, o := range decode(t, render(t, "--set", "crds.enabled=false")) {
		if o.GetKind() == "CustomResourceDefinition" {
			t.Errorf("crds.enabled=false still renders CRD %s", o.GetName())
		}
	}
}

func TestManagerRulesEqualGenerated(t *testing.T) {
	generated := readObjects(t, filepath.Join(repoRoot, "config", "rbac", "role.yaml"))[0]
	chart := mustFind(t, decode(t, render(t)), "ClusterRole", release+"-manager-role")
	if !reflect.DeepEqual(chart.Object["rules"], generated.Object["rules"]) {
		t.Errorf("the manager's ClusterRole rules differ from config/rbac/role.yaml; run `make manifests` and commit\nchart: %v\ngenerated: %v",
			chart.Object["rules"], generated.Object["rules"])
	}
}

func TestSchemaRejectsTypos(t *testing.T) {
	cases := []struct {
		set, want string
	}{
		{"manager.replica=2", "additional properties 'replica' not allowed"},
		{"devicePlugin.nodeSelecter.a=b", "additional properties 'nodeSelecter' not allowed"},
		{"crd.enabled=false", "additional properties 'crd' not allowed"},
		{"devicePlugin.mode=shared", "/devicePlugin/mode"},
		{"manager.metrics.port=0", "/manager/metrics/port"},
		{"server.image.pullPolicy=Always", "additional properties 'pullPolicy' not allowed"},
		{"manager.image.digest=latest", "/manager/image/digest"},
		// A zero rescan period passes a duration pattern but stops the plugin.
		{"devicePlugin.healthInterval=0s", "/devicePlugin/healthInterval"},
		{"devicePlugin.healthInterval=0ms", "/devicePlugin/healthInterval"},
		{"devicePlugin.healthInterval=0h0m0.0s", "/devicePlugin/healthInterval"},
		{"devicePlugin.healthInterval=-1s", "/devicePlugin/healthInterval"},
		{"devicePlugin.healthInterval=1", "/devicePlugin/healthInterval"},
		// Names and labels the API server would refuse.
		{"nameOverride=Big", "/nameOverride"},
		{"fullnameOverride=a.b", "/fullnameOverride"},
		// A Service's name must start with a letter.
		{"fullnameOverride=7edge", "/fullnameOverride"},
		{"nameOverride=7x", "/nameOverride"},
		{"commonLabels.team=edge team", "/commonLabels"},
		{"manager.podLabels.tier=" + strings.Repeat("x", 64), "/manager/podLabels"},
		// Paths the plugin would accept but that mount a folder, or over the root.
		{"devicePlugin.runtimeLibMount=/", "/devicePlugin/runtimeLibMount"},
		{"devicePlugin.runtimeLibMount=/usr/lib/", "/devicePlugin/runtimeLibMount"},
		{"devicePlugin.deviceTreeMount=/", "/devicePlugin/deviceTreeMount"},
	}
	for _, c := range cases {
		t.Run(c.set, func(t *testing.T) {
			_, err := run(t, makevars.Path(t, "E2E_HELM", "test-chart"), "template", release, chartDir, "--set", c.set)
			if err == nil {
				t.Fatalf("--set %s rendered; want a schema error", c.set)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("--set %s: error %q does not mention %q", c.set, err, c.want)
			}
		})
	}
	for _, ok := range []string{"1s", "500ms", "0.5s", "1m0s", "0s500ms"} {
		if _, err := run(t, makevars.Path(t, "E2E_HELM", "test-chart"), "template", release, chartDir, "--set", "devicePlugin.healthInterval="+ok); err != nil {
			t.Errorf("devicePlugin.healthInterval=%s refused: %v", ok, err)
		}
	}
	// A combination the schema cannot express is refused by the templates, with the fix.
	_, err := run(t, makevars.Path(t, "E2E_HELM", "test-chart"), "template", release, chartDir, "--set", "manager.replicas=2", "--set", "manager.leaderElect=false")
	if err == nil || !strings.Contains(err.Error(), "needs manager.leaderElect: true") {
		t.Errorf("2 replicas without leader election: err %v, want a message naming manager.leaderElect", err)
	}
	_, err = run(t, makevars.Path(t, "E2E_HELM", "test-chart"), "template", release, chartDir, "--set", "manager.healthPort=8443")
	if err == nil || !strings.Contains(err.Error(), "manager.metrics.port and manager.healthPort are both 8443") {
		t.Errorf("one port for metrics and probes: err %v, want a message naming both", err)
	}
}

func TestRenderingIsDeterministic(t *testing.T) {
	for _, values := range valueSets(t) {
		first := render(t, "-f", values)
		if second := render(t, "-f", values); first != second {
			t.Errorf("%s renders differently on a second run", values)
		}
	}
	// No function whose output changes between runs or depends on the live cluster.
	nondeterministic := regexp.MustCompile(`\b(lookup|now|randAlpha|randAlphaNum|randNumeric|randAscii|randBytes|uuidv4|genCA|genPrivateKey|genSelfSignedCert|genSignedCert)\b`)
	templates, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	for _, tpl := range templates {
		data, err := os.ReadFile(tpl)
		if err != nil {
			t.Fatal(err)
		}
		for _, action := range regexp.MustCompile(`\{\{.*?\}\}`).FindAllString(string(data), -1) {
			if m := nondeterministic.FindString(action); m != "" {
				t.Errorf("%s uses %s (%s): rendering must not depend on time, randomness or the cluster", tpl, m, action)
			}
		}
	}
}

func TestServiceMonitorOnlyWithItsAPI(t *testing.T) {
	count := func(objs []*unstructured.Unstructured) int {
		n := 0
		for _, o := range objs {
			if o.GetKind() == "ServiceMonitor" {
				n++
			}
		}
		return n
	}
	if n := count(decode(t, render(t, "--set", "serviceMonitor.enabled=true"))); n != 0 {
		t.Errorf("without monitoring.coreos.com/v1 the chart rendered %d ServiceMonitors, want 0", n)
	}
	withAPI := decode(t, render(t, "--set", "serviceMonitor.enabled=true", "--set", "manager.metrics.certSecret=tls",
		"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))
	if n := count(withAPI); n != 3 {
		t.Errorf("with the API the chart rendered %d ServiceMonitors, want 3 (manager, device plugin, model servers)", n)
	}
	if n := count(decode(t, render(t, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))); n != 0 {
		t.Errorf("serviceMonitor.enabled=false rendered %d ServiceMonitors", n)
	}
}

func TestWatchNamespacesGrantsOnlyThere(t *testing.T) {
	objs := decode(t, render(t, "--set", "manager.watchNamespaces={models-a,models-b}"))
	if o := find(objs, "ClusterRoleBinding", release+"-manager-rolebinding"); o != nil {
		t.Error("with watchNamespaces the manager still gets a ClusterRoleBinding")
	}
	var bound []string
	for _, o := range objs {
		if o.GetKind() == "RoleBinding" && o.GetName() == release+"-manager-rolebinding" {
			bound = append(bound, o.GetNamespace())
		}
	}
	sort.Strings(bound)
	if strings.Join(bound, ",") != "models-a,models-b" {
		t.Errorf("manager RoleBindings in %v, want models-a and models-b", bound)
	}
	dep := mustFind(t, objs, "Deployment", release+"-controller-manager")
	if args := containerArgs(t, dep); !contains(args, "--watch-namespaces=models-a,models-b") {
		t.Errorf("manager args %v lack --watch-namespaces", args)
	}
}

func TestDevicePluginHasNoAPIAccess(t *testing.T) {
	objs := decode(t, render(t))
	sa := mustFind(t, objs, "ServiceAccount", release+"-device-plugin")
	if v, _, _ := unstructured.NestedBool(sa.Object, "automountServiceAccountToken"); v {
		t.Error("the device plugin's ServiceAccount mounts a token")
	}
	for _, o := range objs {
		if o.GetKind() != "RoleBinding" && o.GetKind() != "ClusterRoleBinding" {
			continue
		}
		subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
		for _, s := range subjects {
			if s.(map[string]any)["name"] == release+"-device-plugin" {
				t.Errorf("%s %s binds a role to the device plugin", o.GetKind(), o.GetName())
			}
		}
	}
	ds := mustFind(t, objs, "DaemonSet", release+"-device-plugin")
	c := container(t, ds)
	sc := c["securityContext"].(map[string]any)
	if sc["privileged"] == true || sc["allowPrivilegeEscalation"] != false || sc["readOnlyRootFilesystem"] != true {
		t.Errorf("device plugin securityContext %v: want unprivileged, no escalation, read-only root", sc)
	}
}

// TestDevicePluginMountsWhatItReads: the plugin reads everything under --root=/host, and
// refuses to start when the runtime library it is told to hand out (--runtime-lib-mount
// HOST[:CONTAINER]) is not at /host/HOST; and it serves its socket in the kubelet's folder
// and writes the CDI spec and the NFD features file into folders that must be the host's. Each must be a hostPath mount of the same
// host path, with every value set and with the library given without a container path.
func TestDevicePluginMountsWhatItReads(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		wantLib   string // the host path of the runtime library, "" for none
		wantCache string // the node's model cache folder, "" for none
	}{
		{"defaults", nil, "", "/var/lib/rkllm/cache"},
		{"full-values", []string{"-f", filepath.Join(chartDir, "ci", "full-values.yaml")}, "/usr/lib/librkllmrt.so", "/srv/rkllm/models"},
		{"host path only", []string{"--set", "devicePlugin.runtimeLibMount=/opt/rockchip/librkllmrt.so"}, "/opt/rockchip/librkllmrt.so", "/var/lib/rkllm/cache"},
		{"no model cache", []string{"--set", "devicePlugin.modelCache.enabled=false"}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ds := mustFind(t, decode(t, render(t, c.args...)), "DaemonSet", release+"-device-plugin")
			mounts := hostMounts(t, ds)
			args := containerArgs(t, ds)
			want := map[string]hostMount{
				"/host/sys": {hostPath: "/sys", readOnly: true},
				"/host/dev": {hostPath: "/dev", readOnly: true},
			}
			if !contains(args, "--root=/host") {
				t.Fatalf("device plugin args %v lack --root=/host", args)
			}
			for _, a := range args {
				switch {
				case strings.HasPrefix(a, "--kubelet-dir="):
					dir := strings.TrimPrefix(a, "--kubelet-dir=")
					want[dir] = hostMount{hostPath: dir, hostType: "Directory"}
				case strings.HasPrefix(a, "--runtime-lib-mount="):
					host, _, _ := strings.Cut(strings.TrimPrefix(a, "--runtime-lib-mount="), ":")
					if host != c.wantLib {
						t.Errorf("%s: want the host library %q", a, c.wantLib)
					}
					want["/host"+host] = hostMount{hostPath: host, hostType: "File", readOnly: true}
				case strings.HasPrefix(a, "--cdi-spec-dir="):
					dir := strings.TrimPrefix(a, "--cdi-spec-dir=")
					want[dir] = hostMount{hostPath: dir, hostType: "DirectoryOrCreate"}
				case strings.HasPrefix(a, "--node-labels="):
					dir := filepath.Dir(strings.TrimPrefix(a, "--node-labels="))
					want[dir] = hostMount{hostPath: dir, hostType: "DirectoryOrCreate"}
				case strings.HasPrefix(a, "--model-cache-dir="):
					// The plugin makes the folder (mode 1777) under --root.
					dir := strings.TrimPrefix(a, "--model-cache-dir=")
					if dir != c.wantCache {
						t.Errorf("%s: want the model cache at %q", a, c.wantCache)
					}
					want["/host"+dir] = hostMount{hostPath: dir, hostType: "DirectoryOrCreate"}
				}
			}
			if c.wantLib != "" && want["/host"+c.wantLib].hostPath == "" {
				t.Errorf("device plugin args %v lack --runtime-lib-mount for %s", args, c.wantLib)
			}
			for path, w := range want {
				got, ok := mounts[path]
				if !ok {
					t.Errorf("the device plugin reads or writes %s but nothing is mounted there (mounts: %v)", path, mounts)
					continue
				}
				if got.hostPath != w.hostPath || got.readOnly != w.readOnly || (w.hostType != "" && got.hostType != w.hostType) {
					t.Errorf("mount at %s is %+v, want %+v", path, got, w)
				}
			}
			if c.wantLib == "" {
				for path, m := range mounts {
					if strings.Contains(m.hostPath, "librkllmrt") {
						t.Errorf("without runtimeLibMount the DaemonSet still mounts %s at %s", m.hostPath, path)
					}
				}
			}
			if c.wantCache != "" && want["/host"+c.wantCache].hostPath == "" {
				t.Errorf("device plugin args %v lack --model-cache-dir=%s", args, c.wantCache)
			}
			if c.wantCache == "" {
				for _, a := range args {
					if strings.HasPrefix(a, "--model-cache") {
						t.Errorf("modelCache.enabled=false still passes %s", a)
					}
				}
			}
		})
	}
}

// hostMount is a container mount of a hostPath volume.
type hostMount struct {
	hostPath, hostType string
	readOnly           bool
}

// hostMounts maps the container's mount paths of hostPath volumes to those volumes.
func hostMounts(t *testing.T, o *unstructured.Unstructured) map[string]hostMount {
	t.Helper()
	volumes, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "volumes")
	byName := map[string]map[string]any{}
	for _, v := range volumes {
		vol := v.(map[string]any)
		if hp, ok := vol["hostPath"].(map[string]any); ok {
			byName[vol["name"].(string)] = hp
		}
	}
	out := map[string]hostMount{}
	vms, _ := container(t, o)["volumeMounts"].([]any)
	for _, m := range vms {
		vm := m.(map[string]any)
		hp, ok := byName[vm["name"].(string)]
		if !ok {
			continue
		}
		typ, _ := hp["type"].(string)
		ro, _ := vm["readOnly"].(bool)
		out[vm["mountPath"].(string)] = hostMount{hostPath: hp["path"].(string), hostType: typ, readOnly: ro}
	}
	return out
}

// TestDevicePluginNamespace: devicePlugin.namespace moves the plugin's objects (and its
// ServiceMonitor) into a namespace of their own, which createNamespace makes with Pod
// Security privileged (hostPath volumes); the manager stays in the release namespace.
func TestDevicePluginNamespace(t *testing.T) {
	objs := decode(t, render(t, "--set", "devicePlugin.namespace=rknpu-system", "--set", "devicePlugin.createNamespace=true",
		"--set", "serviceMonitor.enabled=true", "--set", "manager.metrics.certSecret=tls", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"))
	for _, kind := range []string{"ServiceAccount", "DaemonSet", "ServiceMonitor"} {
		if o := mustFind(t, objs, kind, release+"-device-plugin"); o.GetNamespace() != "rknpu-system" {
			t.Errorf("device plugin %s in namespace %q, want rknpu-system", kind, o.GetNamespace())
		}
	}
	if o := mustFind(t, objs, "Service", release+"-device-plugin-metrics"); o.GetNamespace() != "rknpu-system" {
		t.Errorf("device plugin metrics Service in %q", o.GetNamespace())
	}
	sm := mustFind(t, objs, "ServiceMonitor", release+"-device-plugin")
	if names, _, _ := unstructured.NestedStringSlice(sm.Object, "spec", "namespaceSelector", "matchNames"); !reflect.DeepEqual(names, []string{"rknpu-system"}) {
		t.Errorf("the plugin's ServiceMonitor looks in %v", names)
	}
	ns := mustFind(t, objs, "Namespace", "rknpu-system")
	if ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace labels %v, want Pod Security privileged", ns.GetLabels())
	}
	if o := mustFind(t, objs, "Deployment", release+"-controller-manager"); o.GetNamespace() != namespace {
		t.Errorf("the manager moved to %q", o.GetNamespace())
	}
	if _, err := run(t, makevars.Path(t, "E2E_HELM", "test-chart"), "template", release, chartDir, "--namespace", namespace,
		"--set", "devicePlugin.createNamespace=true"); err == nil || !strings.Contains(err.Error(), "devicePlugin.createNamespace needs devicePlugin.namespace") {
		t.Errorf("createNamespace without a namespace: %v", err)
	}
}

// TestRollOnUpgradeFlag: the manager restarts servers on an upgrade only when asked.
func TestRollOnUpgradeFlag(t *testing.T) {
	for value, want := range map[string]bool{"false": false, "true": true} {
		dep := mustFind(t, decode(t, render(t, "--set", "manager.rollOnUpgrade="+value)), "Deployment", release+"-controller-manager")
		if got := contains(containerArgs(t, dep), "--roll-on-upgrade"); got != want {
			t.Errorf("rollOnUpgrade=%s: --roll-on-upgrade passed %v", value, got)
		}
	}
}

// appVersion is the chart's appVersion: the release of the images.
func appVersion(t *testing.T) string {
	t.Helper()
	chartYAML, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^appVersion: "?([^"\n]+)"?$`).FindSubmatch(chartYAML)
	if m == nil {
		t.Fatal("no appVersion in Chart.yaml")
	}
	return string(m[1])
}

func TestImageTagsDefaultToAppVersion(t *testing.T) {
	app := appVersion(t)
	objs := decode(t, render(t))
	dep := mustFind(t, objs, "Deployment", release+"-controller-manager")
	if got := container(t, dep)["image"]; got != "ghcr.io/rkllm-operator/rkllm-operator:"+app {
		t.Errorf("manager image %v, want tag %s", got, app)
	}
	if args := containerArgs(t, dep); !contains(args, "--default-server-image=ghcr.io/rkllm-operator/rkllm-server:"+app) {
		t.Errorf("manager args %v: want the server image at %s", args, app)
	}
	ds := mustFind(t, objs, "DaemonSet", release+"-device-plugin")
	if got := container(t, ds)["image"]; got != "ghcr.io/rkllm-operator/rknpu-device-plugin:"+app {
		t.Errorf("device plugin image %v, want tag %s", got, app)
	}
	pinned := decode(t, render(t, "--set", "manager.image.digest=sha256:"+strings.Repeat("ab", 32)))
	if got := container(t, mustFind(t, pinned, "Deployment", release+"-controller-manager"))["image"]; got != "ghcr.io/rkllm-operator/rkllm-operator@sha256:"+strings.Repeat("ab", 32) {
		t.Errorf("a digest gives image %v", got)
	}
}

// TestMatchesKustomize: config/default and the chart (release rkllm-operator in
// rkllm-operator-system, default values) render the same objects, compared whole:
// metadata (labels and annotations included), selectors, pod templates, images, RBAC
// subjects and aggregation labels. Only what Helm itself adds is left out: its
// helm.sh/chart label, the value of app.kubernetes.io/managed-by and the CRD's
// helm.sh/resource-policy; and the Namespace, which kustomize creates and
// `helm install --create-namespace` makes.
func TestMatchesKustomize(t *testing.T) {
	kustomized, err := run(t, makevars.Path(t, "E2E_KUBECTL", "test-chart"), "kustomize", filepath.Join(repoRoot, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	kobjs := map[string]*unstructured.Unstructured{}
	for _, o := range decode(t, kustomized) {
		if o.GetKind() == "Namespace" {
			continue
		}
		kobjs[objectKey(o)] = withoutHelmMetadata(o)
	}
	cobjs := map[string]*unstructured.Unstructured{}
	for _, o := range decode(t, render(t)) {
		cobjs[objectKey(o)] = withoutHelmMetadata(o)
	}
	for k, ko := range kobjs {
		co, ok := cobjs[k]
		if !ok {
			t.Errorf("%s: only kustomize renders it", k)
			continue
		}
		for _, d := range diffValues(k, ko.Object, co.Object) {
			t.Error(d)
		}
	}
	for k := range cobjs {
		if _, ok := kobjs[k]; !ok {
			t.Errorf("%s: only the chart renders it", k)
		}
	}
	// Images are pinned to the release, as the chart's are, never latest.
	app := appVersion(t)
	images := 0
	for k, o := range kobjs {
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			ctr := c.(map[string]any)
			refs := []any{ctr["image"]}
			args, _ := ctr["args"].([]any)
			for _, a := range args {
				if v, ok := strings.CutPrefix(a.(string), "--default-server-image="); ok {
					refs = append(refs, v)
				}
			}
			for _, ref := range refs {
				images++
				if !strings.HasSuffix(ref.(string), ":"+app) {
					t.Errorf("%s: image %v is not pinned to the release %s", k, ref, app)
				}
			}
		}
	}
	if images != 4 {
		t.Errorf("config/default names %d images, want 4 (manager, device plugin, gateway, server)", images)
	}
}

func objectKey(o *unstructured.Unstructured) string {
	return o.GetKind() + "/" + o.GetNamespace() + "/" + o.GetName()
}

// withoutHelmMetadata removes what Helm adds to every object and kustomize cannot.
func withoutHelmMetadata(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	if labels := c.GetLabels(); labels != nil {
		delete(labels, "helm.sh/chart")
		delete(labels, "app.kubernetes.io/managed-by")
		c.SetLabels(labels)
	}
	if ann := c.GetAnnotations(); ann != nil {
		delete(ann, "helm.sh/resource-policy")
		c.SetAnnotations(ann)
		if len(ann) == 0 {
			c.SetAnnotations(nil)
		}
	}
	return c
}

// diffValues lists the paths where two decoded objects differ, with both values.
func diffValues(path string, k, c any) []string {
	km, kok := k.(map[string]any)
	cm, cok := c.(map[string]any)
	if kok && cok {
		var out []string
		keys := map[string]bool{}
		for key := range km {
			keys[key] = true
		}
		for key := range cm {
			keys[key] = true
		}
		sorted := make([]string, 0, len(keys))
		for key := range keys {
			sorted = append(sorted, key)
		}
		sort.Strings(sorted)
		for _, key := range sorted {
			out = append(out, diffValues(path+"."+key, km[key], cm[key])...)
		}
		return out
	}
	kl, kok := k.([]any)
	cl, cok := c.([]any)
	if kok && cok && len(kl) == len(cl) {
		var out []string
		for i := range kl {
			out = append(out, diffValues(fmt.Sprintf("%s[%d]", path, i), kl[i], cl[i])...)
		}
		return out
	}
	if reflect.DeepEqual(k, c) {
		return nil
	}
	return []string{fmt.Sprintf("%s differs\n  kustomize: %v\n  chart:     %v", path, k, c)}
}

func container(t *testing.T, o *unstructured.Unstructured) map[string]any {
	t.Helper()
	cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%s %s has %d containers, want 1", o.GetKind(), o.GetName(), len(cs))
	}
	return cs[0].(map[string]any)
}

func containerArgs(t *testing.T, o *unstructured.Unstructured) []string {
	t.Helper()
	var args []string
	for _, a := range container(t, o)["args"].([]any) {
		args = append(args, a.(string))
	}
	return args
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestDockerfilesBuildWhatBuildArm64Builds: every image builds its binary with
// hack/build-binary.sh, and `make build-arm64` (which CI runs) builds the same set, so a
// binary an image holds always cross-compiles in CI.
func TestDockerfilesBuildWhatBuildArm64Builds(t *testing.T) {
	dockerfiles, err := filepath.Glob(filepath.Join(repoRoot, "images", "*", "Dockerfile"))
	if err != nil || len(dockerfiles) == 0 {
		t.Fatalf("Dockerfiles: %v %v", dockerfiles, err)
	}
	build := regexp.MustCompile(`hack/build-binary\.sh (\S+) \$\{TARGETOS\} \$\{TARGETARCH\} /out`)
	var images []string
	for _, f := range dockerfiles {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := build.FindSubmatch(data)
		if m == nil {
			t.Errorf("%s does not build its binary with hack/build-binary.sh", f)
			continue
		}
		if dir := filepath.Base(filepath.Dir(f)); dir != string(m[1]) {
			t.Errorf("%s builds %s; the folder says %s", f, m[1], dir)
		}
		images = append(images, string(m[1]))
	}
	makefile, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMAGE_BINARIES := (.*)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("no IMAGE_BINARIES in the Makefile")
	}
	arm64 := strings.Fields(string(m[1]))
	sort.Strings(images)
	sort.Strings(arm64)
	if !reflect.DeepEqual(images, arm64) {
		t.Errorf("images build %v, make build-arm64 builds %v", images, arm64)
	}
}
