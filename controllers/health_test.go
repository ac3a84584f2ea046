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
	"fmt"
	"path/filepath"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// argoHealthScript is the Argo CD health check the project ships (docs/install.md).
var argoHealthScript = filepath.Join("..", "config", "argocd", "rkllmmodel-health.lua")

// health is how GitOps tools see a model.
type health struct {
	// kstatus is what sigs.k8s.io/cli-utils' kstatus computes (Flux, kpt, cli-utils).
	kstatus status.Status
	// argo is the Argo CD health status the shipped Lua script gives, and argoMessage its
	// message.
	argo, argoMessage string
}

// healthOf runs the real kstatus library and the shipped Argo CD script, as Argo CD runs
// it (gopher-lua with the object as the global obj), on the model. It fails the test when
// kstatus needs its fallback on Ready: with Ready removed, kstatus must come to the same
// result from Reconciling, Stalled and observedGeneration alone.
func healthOf(t *testing.T, m *inferencev1alpha1.RKLLMModel) health {
	t.Helper()
	u := toUnstructured(t, m)
	res, err := status.Compute(u)
	if err != nil {
		t.Fatalf("kstatus: %v", err)
	}
	noReady := u.DeepCopy()
	conds, _, _ := unstructured.NestedSlice(noReady.Object, "status", "conditions")
	var kept []any
	for _, c := range conds {
		if c.(map[string]any)["type"] != inferencev1alpha1.ConditionReady {
			kept = append(kept, c)
		}
	}
	if err := unstructured.SetNestedSlice(noReady.Object, kept, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	without, err := status.Compute(noReady)
	if err != nil {
		t.Fatalf("kstatus without Ready: %v", err)
	}
	if without.Status != res.Status {
		t.Errorf("kstatus says %s only through its fallback on Ready (%s without it): conditions %+v",
			res.Status, without.Status, m.Status.Conditions)
	}
	h := health{kstatus: res.Status}
	h.argo, h.argoMessage = argoHealth(t, u.Object)
	return h
}

func toUnstructured(t *testing.T, m *inferencev1alpha1.RKLLMModel) *unstructured.Unstructured {
	t.Helper()
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: obj}
	u.SetGroupVersionKind(inferencev1alpha1.GroupVersion.WithKind("RKLLMModel"))
	return u
}

// argoHealth runs the shipped health script on obj.
func argoHealth(t *testing.T, obj map[string]any) (statusName, message string) {
	t.Helper()
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", luaValue(L, obj))
	if err := L.DoFile(argoHealthScript); err != nil {
		t.Fatalf("the Argo CD health script failed: %v", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the Argo CD health script returned %v, not a table", L.Get(-1))
	}
	statusName = lua.LVAsString(ret.RawGetString("status"))
	message = lua.LVAsString(ret.RawGetString("message"))
	switch statusName {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
	default:
		t.Errorf("the Argo CD health script returned status %q, which Argo CD does not know", statusName)
	}
	return statusName, message
}

// luaValue converts decoded JSON into Lua values the way Argo CD hands objects to health
// scripts: objects become tables with string keys, arrays tables indexed from 1.
func luaValue(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case string:
		return lua.LString(x)
	case int64:
		return lua.LNumber(x)
	case int32:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case float64:
		return lua.LNumber(x)
	case map[string]any:
		tbl := L.NewTable()
		for k, e := range x {
			tbl.RawSetString(k, luaValue(L, e))
		}
		return tbl
	case []any:
		tbl := L.NewTable()
		for _, e := range x {
			tbl.Append(luaValue(L, e))
		}
		return tbl
	}
	panic(fmt.Sprintf("no Lua value for %T", v))
}
