/*
Copyright 2026 The rkllm-operator Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package controllers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The install manifests (config/default, built by kubectl's kustomize) and the samples are
// accepted by the API server: every object is applied server-side and validated there.
func TestConfigManifestsApply(t *testing.T) {
	needEnv(t)
	kubectl := filepath.Join(binaryAssets(), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("no kubectl next to kube-apiserver (%v): run `make envtest`, which builds it", err)
	}
	ctx := context.Background()
	for _, dir := range []string{"default", "samples"} {
		out, err := exec.CommandContext(ctx, kubectl, "kustomize", filepath.Join("..", "config", dir)).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize config/%s: %v", dir, stderrOf(err))
		}
		objs := decodeAll(t, out)
		if len(objs) == 0 {
			t.Fatalf("config/%s builds nothing", dir)
		}
		for _, u := range objs {
			if dir == "samples" {
				u.SetNamespace(newNamespace(t))
			}
			opts := []client.ApplyOption{client.FieldOwner("config-test"), client.ForceOwnership}
			if u.GetKind() != "Namespace" && u.GetKind() != "CustomResourceDefinition" {
				// Validated and admitted as for real, not stored: the test's manager is the
				// only one that should act on this cluster.
				opts = append(opts, client.DryRunAll)
			}
			if err := k8sClient.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), opts...); err != nil {
				t.Errorf("config/%s: %s %s: %v", dir, u.GetKind(), u.GetName(), err)
			}
		}
	}
}

func decodeAll(t *testing.T, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("decoding manifests: %v", err)
		}
		if len(u.Object) > 0 {
			out = append(out, u)
		}
	}
}

func stderrOf(err error) string {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return err.Error() + ": " + string(exit.Stderr)
	}
	return err.Error()
}
