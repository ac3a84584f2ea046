//go:build e2e

package chart_test

import (
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/rkllm-operator/rkllm-operator/controllers"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/makevars"
)

// TestStockHelmTemplate: a helm without a cluster renders for the Kubernetes version
// compiled into it, v1.20.0 for a helm built with plain `go install` (this test's helm is
// built for the project's version, so the test names v1.20.0 itself). Every value set
// renders there, while a cluster, or a version asked for, below 1.30 is refused with a
// message that says what to do.
func TestStockHelmTemplate(t *testing.T) {
	for _, values := range valueSets(t) {
		if _, err := run(t, helmPath(t), "template", release, chartDir, "-f", values, "--kube-version", "v1.20.0"); err != nil {
			t.Errorf("a stock helm's template with %s: %v", values, err)
		}
	}
	if _, err := run(t, helmPath(t), "lint", "--strict", chartDir, "--kube-version", "v1.20.0"); err != nil {
		t.Errorf("a stock helm's lint: %v", err)
	}
	cases := []struct {
		name string
		args []string
		ok   bool
	}{
		{"version asked for below 1.30", []string{"--kube-version", "1.29.5"}, false},
		// --api-versions with a kind is what helm knows from a cluster's discovery.
		{"a 1.20 cluster", []string{"--kube-version", "1.20.0", "--api-versions", "v1/Pod"}, false},
		{"a 1.29 cluster with a vendor suffix", []string{"--kube-version", "v1.29.3-eks-1", "--api-versions", "v1/Pod"}, false},
		{"a 1.30 cluster", []string{"--kube-version", "v1.30.0", "--api-versions", "v1/Pod"}, true},
		{"a 1.31 k3s cluster", []string{"--kube-version", "v1.31.4+k3s1", "--api-versions", "v1/Pod"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := run(t, helmPath(t), append([]string{"template", release, chartDir}, c.args...)...)
			switch {
			case c.ok && err != nil:
				t.Errorf("refused: %v", err)
			case !c.ok && err == nil:
				t.Error("rendered; want the version refused")
			case !c.ok && !strings.Contains(err.Error(), "rkllm-operator needs Kubernetes 1.30 or newer"):
				t.Errorf("error %v does not say which version is needed", err)
			}
		})
	}
}

// TestServiceMonitorsUseCurrentFields: no value set renders a field the Prometheus
// Operator's CRD marks deprecated (bearerTokenFile, bearerTokenSecret) or does not know,
// or an unverified TLS connection; the secure endpoint authenticates with a Secret's token
// and verifies the manager's certificate.
func TestServiceMonitorsUseCurrentFields(t *testing.T) {
	sets := [][]string{everything, {"--set", "serviceMonitor.enabled=true", "--set", "manager.metrics.certSecret=tls"}}
	for _, v := range valueSets(t) {
		sets = append(sets, []string{"-f", v})
	}
	for _, set := range sets {
		out := render(t, append([]string{"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}, set...)...)
		for _, field := range []string{"bearerTokenFile", "insecureSkipVerify", "bearerTokenSecret", "caFile"} {
			if strings.Contains(out, field+":") {
				t.Errorf("values %v render %s", set, field)
			}
		}
	}
	// Every field the ServiceMonitors set is one the Prometheus Operator's CRD knows and
	// does not mark deprecated.
	schema := serviceMonitorSchema(t)
	for _, set := range sets {
		out := render(t, append([]string{"--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"}, set...)...)
		for _, o := range decode(t, out) {
			if o.GetKind() == "ServiceMonitor" {
				for _, p := range schemaProblems("spec", o.Object["spec"], schema.Properties["spec"]) {
					t.Errorf("values %v: ServiceMonitor %s: %s", set, o.GetName(), p)
				}
			}
		}
	}

	objs := decode(t, render(t, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
		"--set", "serviceMonitor.enabled=true", "--set", "manager.metrics.certSecret=manager-metrics-tls"))
	sm := mustFind(t, objs, "ServiceMonitor", release+"-controller-manager")
	ep := firstEndpoint(t, sm)
	if typ, _, _ := unstructured.NestedString(ep, "authorization", "type"); typ != "Bearer" {
		t.Errorf("authorization %v, want a Bearer token from a Secret", ep["authorization"])
	}
	secret := mustFind(t, objs, "Secret", release+"-metrics-scraper-token")
	if secret.Object["type"] != "kubernetes.io/service-account-token" {
		t.Errorf("the scraper's Secret has type %v", secret.Object["type"])
	}
	if ca, _, _ := unstructured.NestedString(ep, "tlsConfig", "ca", "secret", "name"); ca != "manager-metrics-tls" {
		t.Errorf("tlsConfig %v does not verify with manager.metrics.certSecret", ep["tlsConfig"])
	}
	// The scraper may read /metrics: its binding grants metrics-reader, nothing more.
	crb := mustFind(t, objs, "ClusterRoleBinding", release+"-metrics-scraper")
	if ref, _, _ := unstructured.NestedString(crb.Object, "roleRef", "name"); ref != release+"-metrics-reader" {
		t.Errorf("the scraper is bound to %s", ref)
	}
	// The manager serves the Secret's certificate.
	dep := mustFind(t, objs, "Deployment", release+"-controller-manager")
	if !contains(containerArgs(t, dep), "--metrics-cert-path=/etc/metrics-certs") {
		t.Errorf("manager args %v lack --metrics-cert-path", containerArgs(t, dep))
	}
	if m := hostlessMounts(t, dep); m["/etc/metrics-certs"] != "metrics-cert" {
		t.Errorf("manager mounts %v, want the certificate Secret at /etc/metrics-certs", m)
	}

	// Without a certificate Prometheus could only skip verification: refused, with the fix.
	_, err := run(t, helmPath(t), "template", release, chartDir, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "serviceMonitor.enabled=true")
	if err == nil || !strings.Contains(err.Error(), "needs manager.metrics.certSecret") {
		t.Errorf("a secure ServiceMonitor without a certificate: err %v", err)
	}
}

// serviceMonitorSchema is the OpenAPI schema of the ServiceMonitor CRD the Makefile
// generates from the Prometheus Operator's Go types.
func serviceMonitorSchema(t *testing.T) apiextensionsv1.JSONSchemaProps {
	t.Helper()
	data, err := os.ReadFile(makevars.Path(t, "E2E_SERVICEMONITOR_CRD", "test-chart"))
	if err != nil {
		t.Fatal(err)
	}
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.Unmarshal(data, crd); err != nil {
		t.Fatal(err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name == "v1" && v.Schema != nil && v.Schema.OpenAPIV3Schema != nil {
			return *v.Schema.OpenAPIV3Schema
		}
	}
	t.Fatal("the ServiceMonitor CRD has no v1 schema")
	return apiextensionsv1.JSONSchemaProps{}
}

// schemaProblems lists the fields of v, at path, that the schema does not know or marks
// deprecated.
func schemaProblems(path string, v any, s apiextensionsv1.JSONSchemaProps) []string {
	var out []string
	if strings.Contains(s.Description, "Deprecated") {
		out = append(out, fmt.Sprintf("%s is deprecated: %s", path, s.Description))
	}
	switch v := v.(type) {
	case map[string]any:
		if s.XPreserveUnknownFields != nil && *s.XPreserveUnknownFields {
			return out
		}
		for key, child := range v {
			prop, ok := s.Properties[key]
			if !ok && s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
				prop, ok = *s.AdditionalProperties.Schema, true
			}
			if !ok {
				out = append(out, fmt.Sprintf("%s.%s is not a field of the CRD", path, key))
				continue
			}
			out = append(out, schemaProblems(path+"."+key, child, prop)...)
		}
	case []any:
		if s.Items != nil && s.Items.Schema != nil {
			for i, child := range v {
				out = append(out, schemaProblems(fmt.Sprintf("%s[%d]", path, i), child, *s.Items.Schema)...)
			}
		}
	}
	return out
}

func firstEndpoint(t *testing.T, sm *unstructured.Unstructured) map[string]any {
	t.Helper()
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor %s has %d endpoints", sm.GetName(), len(eps))
	}
	return eps[0].(map[string]any)
}

// hostlessMounts maps the container's mount paths to volume names.
func hostlessMounts(t *testing.T, o *unstructured.Unstructured) map[string]string {
	t.Helper()
	out := map[string]string{}
	vms, _ := container(t, o)["volumeMounts"].([]any)
	for _, m := range vms {
		vm := m.(map[string]any)
		out[vm["mountPath"].(string)] = vm["name"].(string)
	}
	return out
}

// TestModelServerMonitorAndPolicy: the model servers' ServiceMonitor and NetworkPolicy
// select exactly what the operator labels every model server with, in the namespaces
// models run in.
func TestModelServerMonitorAndPolicy(t *testing.T) {
	objs := decode(t, render(t, everything...))
	sm := mustFind(t, objs, "ServiceMonitor", release+"-model-servers")
	if sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels"); !reflect.DeepEqual(sel, controllers.ServerLabels()) {
		t.Errorf("the model servers' ServiceMonitor selects %v, the operator labels servers %v", sel, controllers.ServerLabels())
	}
	if port := firstEndpoint(t, sm)["targetPort"]; port != controllers.ServerMetricsPort {
		t.Errorf("the model servers' ServiceMonitor scrapes port %v, the servers serve metrics apart from clients on %s", port, controllers.ServerMetricsPort)
	}
	if any, _, _ := unstructured.NestedBool(sm.Object, "spec", "namespaceSelector", "any"); !any {
		t.Errorf("without watchNamespaces the ServiceMonitor must look in every namespace: %v", sm.Object["spec"])
	}
	var policies []string
	for _, o := range objs {
		if o.GetKind() != "NetworkPolicy" {
			continue
		}
		policies = append(policies, o.GetNamespace())
		if sel, _, _ := unstructured.NestedStringMap(o.Object, "spec", "podSelector", "matchLabels"); !reflect.DeepEqual(sel, controllers.ServerLabels()) {
			t.Errorf("NetworkPolicy in %s selects %v", o.GetNamespace(), sel)
		}
	}
	if strings.Join(policies, ",") != "models-a,models-b" {
		t.Errorf("NetworkPolicies in %v, want models-a and models-b", policies)
	}

	// The namespaces default to the watched ones; the ServiceMonitor looks only there;
	// extra peers are allowed in.
	objs = decode(t, render(t, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor",
		"--set", "serviceMonitor.enabled=true", "--set", "manager.metrics.secure=false",
		"--set", "manager.watchNamespaces={llm}", "--set", "modelServers.networkPolicy.enabled=true",
		"--set-json", `modelServers.networkPolicy.from=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]`))
	np := find2(objs, "NetworkPolicy", "llm", release+"-model-servers")
	if np == nil {
		t.Fatal("no NetworkPolicy in the watched namespace llm")
	}
	ingress, _, _ := unstructured.NestedSlice(np.Object, "spec", "ingress")
	if from := ingress[0].(map[string]any)["from"].([]any); len(from) != 2 {
		t.Errorf("ingress from %v, want the namespace's pods and the monitoring namespace", from)
	}
	sm = mustFind(t, objs, "ServiceMonitor", release+"-model-servers")
	if names, _, _ := unstructured.NestedStringSlice(sm.Object, "spec", "namespaceSelector", "matchNames"); !reflect.DeepEqual(names, []string{"llm"}) {
		t.Errorf("the model servers' ServiceMonitor looks in %v, want [llm]", names)
	}
	off := decode(t, render(t, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "serviceMonitor.enabled=true",
		"--set", "manager.metrics.secure=false", "--set", "serviceMonitor.modelServers=false"))
	if find(off, "ServiceMonitor", release+"-model-servers") != nil || find(off, "ServiceMonitor", release+"-controller-manager") == nil {
		t.Error("serviceMonitor.modelServers=false must drop the model servers' ServiceMonitor only")
	}

	_, err := run(t, helmPath(t), "template", release, chartDir, "--set", "modelServers.networkPolicy.enabled=true")
	if err == nil || !strings.Contains(err.Error(), "needs modelServers.networkPolicy.namespaces") {
		t.Errorf("a NetworkPolicy without namespaces: err %v", err)
	}
}
