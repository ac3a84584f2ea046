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

package v1alpha1

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

// project is the part of kubebuilder's PROJECT file this test checks.
type project struct {
	Domain    string   `json:"domain"`
	Layout    []string `json:"layout"`
	Repo      string   `json:"repo"`
	Resources []struct {
		API *struct {
			Namespaced bool `json:"namespaced"`
		} `json:"api"`
		Controller bool   `json:"controller"`
		Domain     string `json:"domain"`
		Group      string `json:"group"`
		Kind       string `json:"kind"`
		Path       string `json:"path"`
		Version    string `json:"version"`
	} `json:"resources"`
}

// scaffolds lists, for the layout plugins, files their scaffold puts in the tree: a
// PROJECT naming a plugin claims the tree has them.
var scaffolds = map[string][]string{
	"go.kubebuilder.io/v4": {"cmd/main.go", "internal/controller"},
	"go.kubebuilder.io/v3": {"main.go", "controllers"},
	"kustomize.common.kubebuilder.io/v2": {
		"config/default/kustomization.yaml", "config/crd/kustomization.yaml", "config/rbac/kustomization.yaml",
		"config/manager/kustomization.yaml", "config/samples/kustomization.yaml",
	},
}

// PROJECT tells the truth about the tree: the layout it names is the one the files
// follow, and its resources are this package's kinds, group, version and path, with the
// controllers that exist.
func TestProjectFileDescribesTheTree(t *testing.T) {
	root := filepath.Join("..", "..")
	data, err := os.ReadFile(filepath.Join(root, "PROJECT"))
	if err != nil {
		t.Fatal(err)
	}
	var p project
	if err := yaml.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Layout) == 0 {
		t.Error("PROJECT names no layout")
	}
	for _, plugin := range p.Layout {
		files, known := scaffolds[plugin]
		if !known {
			t.Errorf("PROJECT names the layout %s, which this test does not know: add what it scaffolds", plugin)
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(root, f)); err != nil {
				t.Errorf("PROJECT names the layout %s, which scaffolds %s; the tree has none", plugin, f)
			}
		}
	}

	scheme := runtime.NewScheme()
	if err := AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	pkg := reflect.TypeOf(RKLLMModel{}).PkgPath()
	if !strings.HasPrefix(pkg, p.Repo+"/") {
		t.Errorf("PROJECT's repo %s is not this module (%s)", p.Repo, pkg)
	}
	kinds := map[string]bool{}
	for _, r := range p.Resources {
		kinds[r.Kind] = true
		if r.Group+"."+r.Domain != GroupVersion.Group || r.Version != GroupVersion.Version || r.Path != pkg {
			t.Errorf("PROJECT resource %s is %s.%s/%s at %s; the API is %s at %s", r.Kind, r.Group, r.Domain, r.Version, r.Path, GroupVersion, pkg)
		}
		if !scheme.Recognizes(GroupVersion.WithKind(r.Kind)) {
			t.Errorf("PROJECT lists the kind %s, which the API does not register", r.Kind)
		}
		ctrl := filepath.Join(root, "controllers", strings.ToLower(r.Kind)+"_controller.go")
		if _, err := os.Stat(ctrl); (err == nil) != r.Controller {
			t.Errorf("PROJECT says controller: %v for %s, and %s exists: %v", r.Controller, r.Kind, ctrl, err == nil)
		}
	}
	for kind, typ := range scheme.KnownTypes(GroupVersion) {
		if typ.PkgPath() == pkg && !strings.HasSuffix(kind, "List") && !kinds[kind] {
			t.Errorf("the API registers %s, which PROJECT does not list", kind)
		}
	}
}
