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
	"encoding/json"
	"sort"

	corev1 "k8s.io/api/core/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// maxModelFetches bounds status.modelFetches (the CRD's MaxItems).
const maxModelFetches = 64

// fetchOutcome is what `rkllm-server fetch --result-file` writes (server/modelcache's
// Outcome), read back from the init container's termination message.
type fetchOutcome struct {
	Result    string `json:"result"`
	NodeCache bool   `json:"nodeCache"`
	Bytes     int64  `json:"bytes"`
}

// modelFetches says where the model file of each current server pod came from, read
// from the termination message of its finished fetch-model init container, in pod name
// order. Pods that did not fetch (model on the node or a PVC, download still running)
// are left out.
func modelFetches(model *inferencev1alpha1.RKLLMModel, pods []corev1.Pod, hash string) []inferencev1alpha1.ModelFetch {
	var out []inferencev1alpha1.ModelFetch
	name := modelFile{role: "model"}.fetchContainerName()
	for i := range pods {
		pod := &pods[i]
		if hash == "" || pod.Annotations[AnnotationRolloutHash] != hash {
			continue
		}
		for _, cs := range pod.Status.InitContainerStatuses {
			t := cs.State.Terminated
			if cs.Name != name || t == nil || t.ExitCode != 0 {
				continue
			}
			var o fetchOutcome
			if json.Unmarshal([]byte(t.Message), &o) != nil {
				continue
			}
			f := inferencev1alpha1.ModelFetch{Pod: pod.Name, Node: pod.Spec.NodeName, Bytes: o.Bytes,
				Result: inferencev1alpha1.FetchDownloaded, Cache: fetchCache(model, o.NodeCache)}
			if o.Result == string(inferencev1alpha1.FetchCacheHit) {
				f.Result = inferencev1alpha1.FetchCacheHit
			}
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pod < out[j].Pod })
	if len(out) > maxModelFetches {
		out = out[:maxModelFetches]
	}
	return out
}

// fetchCache is where a fetch kept the file: the node's cache when it says so, else
// the volume the spec gives the downloads.
func fetchCache(model *inferencev1alpha1.RKLLMModel, nodeCache bool) inferencev1alpha1.FetchCache {
	switch {
	case nodeCache:
		return inferencev1alpha1.FetchCacheNode
	case model.Spec.Model.GetCache() == inferencev1alpha1.FetchCacheHostPath:
		return inferencev1alpha1.FetchCacheHostPath
	}
	return inferencev1alpha1.FetchCachePod
}
