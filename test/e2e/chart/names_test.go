//go:build e2e

package chart_test

import (
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	clientscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/rkllm-operator/rkllm-operator/controllers"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

func helmPath(t *testing.T) string { return makevars.Path(t, "E2E_HELM", "test-chart") }

// releaseNames are names Helm accepts (at most 53 characters of DNS-subdomain syntax,
// dots included, a digit first too), from the shortest to the longest, with and without
// the chart's name.
var releaseNames = []string{
	"r",
	"7",
	"7edge",
	"2026.edge.llm",
	"1-rkllm-operator",
	"rkllm-operator",
	"edge-llm-stack",
	"edge.llm.stack",
	"x-rkllm-operator-in-the-basement-rack-7",
	strings.Repeat("a", 53),
	strings.Repeat("b1.", 17) + "bb",
	"rkllm-operator-" + strings.Repeat("c", 38),
	"9" + strings.Repeat("d", 52),
}

// everything switches on every optional object, for the name checks.
var everything = []string{
	"-f", filepath.Join(chartDir, "ci", "full-values.yaml"),
	"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
	"--set", "manager.metrics.secure=true",
	"--set", "manager.metrics.certSecret=manager-metrics-tls",
	"--set", "modelServers.networkPolicy.enabled=true",
	"--set", "modelServers.networkPolicy.namespaces={models-a,models-b}",
}

// TestNamesFitForAnyRelease: with any release name Helm accepts, every value set renders
// objects whose names are DNS labels (Services: DNS-1035 labels), whose labels and
// selectors are valid, that are unique, whose references (ServiceAccounts, roles,
// Secrets, selectors) point at objects of the same render, and that decode into their
// Go types (a release or namespace name such as "7" or "on" stays a string).
func TestNamesFitForAnyRelease(t *testing.T) {
	sets := map[string][]string{"everything": everything}
	for _, v := range valueSets(t) {
		sets[filepath.Base(v)] = []string{"-f", v, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}
	}
	for _, rel := range releaseNames {
		for setName, set := range sets {
			t.Run(fmt.Sprintf("%s/%s", rel, setName), func(t *testing.T) {
				objs := decode(t, renderRelease(t, rel, set...))
				checkNames(t, objs)
				checkLabels(t, objs)
				checkReferences(t, objs)
				checkTypes(t, objs)
			})
		}
	}
	// A namespace and a release that YAML would read as a number and a boolean.
	objs := decode(t, helm(t, append([]string{"template", "on", chartDir, "--namespace", "7",
		"--set-string", "devicePlugin.namespace=8", "--set", "devicePlugin.createNamespace=true"}, everything...)...))
	checkTypes(t, objs)
	checkReferences(t, objs)
	// The override sets the whole prefix; a long one is shortened like a release name.
	objs = decode(t, renderRelease(t, "r", append([]string{"--set", "fullnameOverride=" + strings.Repeat("f", 63)}, everything...)...))
	checkNames(t, objs)
	checkReferences(t, objs)
}

// TestLongReleasesDoNotCollide: two releases whose names share a long start, in two
// namespaces, get different names for the cluster-wide objects (roles, bindings). The
// CRD and a Namespace the values name are the same object for both on purpose.
func TestLongReleasesDoNotCollide(t *testing.T) {
	common := strings.Repeat("edge-cluster-", 3)
	a := decode(t, renderRelease(t, common+"north", everything...))
	b := decode(t, helm(t, "template", common+"south", chartDir, "--namespace", "other", everything[0], everything[1]))
	names := map[string]bool{}
	for _, o := range a {
		if releaseScoped(o) {
			names[o.GetKind()+"/"+o.GetName()] = true
		}
	}
	shared := 0
	for _, o := range b {
		if releaseScoped(o) {
			if names[o.GetKind()+"/"+o.GetName()] {
				t.Errorf("both releases render %s %s", o.GetKind(), o.GetName())
			}
			shared++
		}
	}
	if shared == 0 {
		t.Fatal("no cluster-wide objects rendered")
	}
}

// checkTypes: every object of a kind client-go knows decodes into its Go type, with no
// field unknown to it, as the API server would decode it (a release or namespace name
// YAML reads as a number or a boolean, in a label or a namespace, would not).
func checkTypes(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		typed, err := clientscheme.Scheme.New(o.GroupVersionKind())
		if err != nil {
			continue // CRDs and ServiceMonitors: the edge e2e applies them with a server dry-run
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, typed, true); err != nil {
			t.Errorf("%s %s/%s does not decode as the API server would: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
}

// releaseScoped: a cluster-wide object named after the release.
func releaseScoped(o *unstructured.Unstructured) bool {
	return o.GetNamespace() == "" && o.GetKind() != "CustomResourceDefinition" && o.GetKind() != "Namespace"
}

func renderRelease(t *testing.T, rel string, args ...string) string {
	t.Helper()
	return helm(t, append([]string{"template", rel, chartDir, "--namespace", namespace}, args...)...)
}

// helm runs the chart test's helm and fails the test on an error.
func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(t, helmPath(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkNames(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	seen := map[string]bool{}
	for _, o := range objs {
		name := o.GetName()
		var errs []string
		switch o.GetKind() {
		case "CustomResourceDefinition":
			errs = validation.IsDNS1123Subdomain(name)
		case "Service":
			errs = validation.IsDNS1035Label(name)
		default:
			errs = validation.IsDNS1123Label(name)
		}
		if len(errs) > 0 {
			t.Errorf("%s %q (%d characters): %s", o.GetKind(), name, len(name), strings.Join(errs, "; "))
		}
		if k := objectKey(o); seen[k] {
			t.Errorf("%s is rendered twice", k)
		} else {
			seen[k] = true
		}
	}
}

// labelMaps are the label sets of an object: its own, its pod template's and its
// selectors'.
func labelMaps(o *unstructured.Unstructured) map[string]map[string]string {
	out := map[string]map[string]string{"metadata.labels": o.GetLabels()}
	for _, path := range [][]string{
		{"spec", "template", "metadata", "labels"},
		{"spec", "selector", "matchLabels"},
		{"spec", "podSelector", "matchLabels"},
	} {
		if m, ok, _ := unstructured.NestedStringMap(o.Object, path...); ok {
			out[strings.Join(path, ".")] = m
		}
	}
	if o.GetKind() == "Service" {
		if m, ok, _ := unstructured.NestedStringMap(o.Object, "spec", "selector"); ok {
			out["spec.selector"] = m
		}
	}
	return out
}

func checkLabels(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		for where, m := range labelMaps(o) {
			for k, v := range m {
				if errs := append(validation.IsQualifiedName(k), validation.IsValidLabelValue(v)...); len(errs) > 0 {
					t.Errorf("%s %s %s: %s=%q: %s", o.GetKind(), o.GetName(), where, k, v, strings.Join(errs, "; "))
				}
			}
		}
	}
}

// checkReferences follows every name one rendered object gives another.
func checkReferences(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	has := func(kind, ns, name string) bool { return find2(objs, kind, ns, name) != nil }
	for _, o := range objs {
		ns := o.GetNamespace()
		what := o.GetKind() + " " + o.GetName()
		if sa, ok, _ := unstructured.NestedString(o.Object, "spec", "template", "spec", "serviceAccountName"); ok && !has("ServiceAccount", ns, sa) {
			t.Errorf("%s runs as ServiceAccount %s, which is not rendered", what, sa)
		}
		if sel, ok, _ := unstructured.NestedStringMap(o.Object, "spec", "selector", "matchLabels"); ok && o.GetKind() != "ServiceMonitor" {
			tpl, _, _ := unstructured.NestedStringMap(o.Object, "spec", "template", "metadata", "labels")
			if !labels.SelectorFromSet(sel).Matches(labels.Set(tpl)) {
				t.Errorf("%s: selector %v does not select its pod template %v", what, sel, tpl)
			}
		}
		switch o.GetKind() {
		case "RoleBinding", "ClusterRoleBinding":
			ref, _, _ := unstructured.NestedStringMap(o.Object, "roleRef")
			refNS := ""
			if ref["kind"] == "Role" {
				refNS = ns
			}
			if !has(ref["kind"], refNS, ref["name"]) {
				t.Errorf("%s refers to %s %s, which is not rendered", what, ref["kind"], ref["name"])
			}
			subjects, _, _ := unstructured.NestedSlice(o.Object, "subjects")
			for _, s := range subjects {
				sub := s.(map[string]any)
				if sub["kind"] == "ServiceAccount" && !has("ServiceAccount", sub["namespace"].(string), sub["name"].(string)) {
					t.Errorf("%s binds ServiceAccount %s/%s, which is not rendered", what, sub["namespace"], sub["name"])
				}
			}
		case "Service":
			sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "selector")
			if !selectsAWorkload(objs, ns, sel) {
				t.Errorf("%s: selector %v selects no pod template of the release", what, sel)
			}
		case "Secret":
			if sa := o.GetAnnotations()["kubernetes.io/service-account.name"]; sa != "" && !has("ServiceAccount", ns, sa) {
				t.Errorf("%s holds the token of ServiceAccount %s, which is not rendered", what, sa)
			}
		case "ServiceMonitor":
			checkServiceMonitor(t, objs, o)
		}
	}
}

func selectsAWorkload(objs []*unstructured.Unstructured, ns string, sel map[string]string) bool {
	for _, w := range objs {
		tpl, ok, _ := unstructured.NestedStringMap(w.Object, "spec", "template", "metadata", "labels")
		if ok && w.GetNamespace() == ns && labels.SelectorFromSet(sel).Matches(labels.Set(tpl)) {
			return true
		}
	}
	return false
}

// checkServiceMonitor: a ServiceMonitor of the release's own workloads selects one of its
// Services, by a port that Service has, with the token Secret and server name that exist.
func checkServiceMonitor(t *testing.T, objs []*unstructured.Unstructured, sm *unstructured.Unstructured) {
	t.Helper()
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	if reflect.DeepEqual(sel, controllers.ServerLabels()) {
		return // the model servers' Services are the operator's, not the chart's
	}
	var svc *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "Service" && o.GetNamespace() == sm.GetNamespace() && labels.SelectorFromSet(sel).Matches(labels.Set(o.GetLabels())) {
			if svc != nil {
				t.Errorf("ServiceMonitor %s selects both Service %s and %s", sm.GetName(), svc.GetName(), o.GetName())
			}
			svc = o
		}
	}
	if svc == nil {
		t.Errorf("ServiceMonitor %s selects no Service of the release (%v)", sm.GetName(), sel)
		return
	}
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	for _, e := range endpoints {
		ep := e.(map[string]any)
		found := false
		for _, p := range ports {
			found = found || p.(map[string]any)["name"] == ep["port"]
		}
		if !found {
			t.Errorf("ServiceMonitor %s scrapes port %v, which Service %s lacks", sm.GetName(), ep["port"], svc.GetName())
		}
		if secret, ok, _ := unstructured.NestedString(ep, "authorization", "credentials", "name"); ok && find2(objs, "Secret", sm.GetNamespace(), secret) == nil {
			t.Errorf("ServiceMonitor %s authenticates with Secret %s, which is not rendered", sm.GetName(), secret)
		}
		if name, ok, _ := unstructured.NestedString(ep, "tlsConfig", "serverName"); ok && name != svc.GetName()+"."+svc.GetNamespace()+".svc" {
			t.Errorf("ServiceMonitor %s expects the certificate of %s; the Service is %s.%s.svc", sm.GetName(), name, svc.GetName(), svc.GetNamespace())
		}
	}
}

func find2(objs []*unstructured.Unstructured, kind, ns, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetNamespace() == ns && o.GetName() == name {
			return o
		}
	}
	return nil
}
