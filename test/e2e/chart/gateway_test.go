//go:build e2e

package chart_test

import (
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// The gateway's ClusterRole holds exactly the rules controller-gen generated from the
// markers in gateway/.
func TestGatewayRulesEqualGenerated(t *testing.T) {
	generated := readObjects(t, filepath.Join(repoRoot, "config", "gateway", "role.yaml"))[0]
	chart := mustFind(t, decode(t, render(t)), "ClusterRole", release+"-gateway-role")
	if !reflect.DeepEqual(chart.Object["rules"], generated.Object["rules"]) {
		t.Errorf("the gateway's ClusterRole rules differ from config/gateway/role.yaml; run `make manifests` and commit\nchart: %v\ngenerated: %v",
			chart.Object["rules"], generated.Object["rules"])
	}
}

// With gateway.namespaces the gateway's role is granted in those namespaces only, and
// cluster-wide it may only list nodes and pods (where the NPUs are, and who holds them).
func TestGatewayNamespacesGrantOnlyThere(t *testing.T) {
	objs := decode(t, render(t, "--set", "gateway.namespaces={models-a,models-b}"))
	if o := find(objs, "ClusterRoleBinding", release+"-gateway-rolebinding"); o != nil {
		t.Error("with gateway.namespaces the gateway still gets its whole role cluster-wide")
	}
	var bound []string
	for _, o := range objs {
		if o.GetKind() == "RoleBinding" && o.GetName() == release+"-gateway-rolebinding" {
			bound = append(bound, o.GetNamespace())
		}
	}
	sort.Strings(bound)
	if strings.Join(bound, ",") != "models-a,models-b" {
		t.Errorf("gateway RoleBindings in %v, want models-a and models-b", bound)
	}
	placement := mustFind(t, objs, "ClusterRole", release+"-gateway-placement-role")
	rules, _, _ := unstructured.NestedSlice(placement.Object, "rules")
	if len(rules) != 1 || !reflect.DeepEqual(rules[0].(map[string]any)["verbs"], []any{"list"}) ||
		!reflect.DeepEqual(rules[0].(map[string]any)["resources"], []any{"nodes", "pods"}) {
		t.Errorf("cluster-wide the gateway gets %v, want only list of nodes and pods", rules)
	}
	mustFind(t, objs, "ClusterRoleBinding", release+"-gateway-placement-rolebinding")
	if args := containerArgs(t, mustFind(t, objs, "Deployment", release+"-gateway")); !contains(args, "--namespaces=models-a,models-b") {
		t.Errorf("gateway args %v lack --namespaces", args)
	}
}

// apiKeys.secretName mounts the Secret and points the gateway at its key.
func TestGatewayAPIKeys(t *testing.T) {
	dep := mustFind(t, decode(t, render(t, "--set", "gateway.apiKeys.secretName=gateway-keys", "--set", "gateway.apiKeys.key=clients.yaml")),
		"Deployment", release+"-gateway")
	if args := containerArgs(t, dep); !contains(args, "--api-keys-file=/etc/rkllm-gateway/keys/clients.yaml") {
		t.Errorf("gateway args %v lack --api-keys-file", args)
	}
	mounts, _, _ := unstructured.NestedSlice(container(t, dep), "volumeMounts")
	volumes, _, _ := unstructured.NestedSlice(dep.Object, "spec", "template", "spec", "volumes")
	if len(mounts) != 1 || mounts[0].(map[string]any)["mountPath"] != "/etc/rkllm-gateway/keys" || mounts[0].(map[string]any)["readOnly"] != true ||
		len(volumes) != 1 || volumes[0].(map[string]any)["secret"].(map[string]any)["secretName"] != "gateway-keys" {
		t.Errorf("mounts %v volumes %v: want the Secret gateway-keys read-only at /etc/rkllm-gateway/keys", mounts, volumes)
	}
	// Without keys nothing is mounted and no key is asked for.
	plain := mustFind(t, decode(t, render(t)), "Deployment", release+"-gateway")
	for _, a := range containerArgs(t, plain) {
		if strings.HasPrefix(a, "--api-keys-file") {
			t.Errorf("without apiKeys the gateway gets %s", a)
		}
	}
}

// gateway.enabled=false leaves the gateway out entirely.
func TestGatewayDisabled(t *testing.T) {
	for _, o := range decode(t, render(t, "--set", "gateway.enabled=false")) {
		if strings.Contains(o.GetName(), "gateway") {
			t.Errorf("gateway.enabled=false rendered %s %s", o.GetKind(), o.GetName())
		}
	}
}
