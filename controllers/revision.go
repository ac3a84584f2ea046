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
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// AnnotationRevision on the Deployment records what its pod template was built from and
// the server configuration it runs with (a revision). While the model's spec keeps
// meaning the same pods, the operator applies the recorded template again instead of
// building a new one: an operator upgrade (a new default server image, a new pod layout)
// restarts no server unless the model changes or --roll-on-upgrade is set.
const AnnotationRevision = "inference.rkllm.io/revision"

// revision is the content of AnnotationRevision.
type revision struct {
	// Template is the pod template as the operator applied it.
	Template *corev1ac.PodTemplateSpecApplyConfiguration `json:"template"`
	// Config is server.json as the operator applied it.
	Config string `json:"config"`
	// SpecHash is specHash of the model the template stands for.
	SpecHash string `json:"specHash"`
	// Generation is the model's generation the template stands for.
	Generation int64 `json:"generation"`
}

// retunableKeys are the server.json keys a running rkllm-server takes from a changed
// file without a restart with runtime ABI 1.3 (rkllm-server's config.RetunableFlags):
// changing them updates the ConfigMap but does not roll the pods.
var retunableKeys = []string{
	"max-new-tokens", "top-k", "top-p", "temperature", "repeat-penalty", "frequency-penalty",
	"presence-penalty", "mirostat", "mirostat-tau", "mirostat-eta",
}

// retunable reports whether the model's server takes retunableKeys while it runs.
func retunable(spec *inferencev1alpha1.RKLLMModelSpec) bool { return spec.GetABI() == "1.3" }

// specHash is a hash of the parts of the model's spec that shape its server pods: all
// of it but the replica count, suspend and, when the server takes them while running,
// the retunable parameters.
func specHash(model *inferencev1alpha1.RKLLMModel) (string, error) {
	spec := model.Spec.DeepCopy()
	spec.Replicas = nil
	spec.Suspend = false
	if p := spec.Parameters; p != nil && retunable(spec) {
		p.MaxNewTokens, p.TopK, p.TopP, p.Temperature, p.RepeatPenalty = nil, nil, nil, nil, nil
		p.FrequencyPenalty, p.PresencePenalty, p.Mirostat, p.MirostatTau, p.MirostatEta = nil, nil, nil, nil, nil
		if *p == (inferencev1alpha1.Parameters{}) {
			// Only retunable parameters were set: the same pods as none at all.
			spec.Parameters = nil
		}
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return "", fmt.Errorf("encoding the spec: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])[:16], nil
}

// configForHash is server.json without the keys the server takes while running, for
// the rollout hash: changing them must not roll the pods.
func configForHash(spec *inferencev1alpha1.RKLLMModelSpec, config []byte) ([]byte, error) {
	if !retunable(spec) {
		return config, nil
	}
	c, err := decodeConfig(config)
	if err != nil {
		return nil, err
	}
	for _, k := range retunableKeys {
		delete(c, k)
	}
	return encodeConfig(c)
}

// retuneConfig is a recorded server.json with the retunable keys of fresh (the current
// spec's), so a kept revision still gets changed sampling defaults.
func retuneConfig(recorded string, fresh []byte) ([]byte, error) {
	old, err := decodeConfig([]byte(recorded))
	if err != nil {
		return nil, err
	}
	cur, err := decodeConfig(fresh)
	if err != nil {
		return nil, err
	}
	for _, k := range retunableKeys {
		if v, ok := cur[k]; ok {
			old[k] = v
		} else {
			delete(old, k)
		}
	}
	return encodeConfig(old)
}

func decodeConfig(b []byte) (map[string]any, error) {
	var c map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decoding server configuration: %w", err)
	}
	return c, nil
}

// encodeConfig writes server.json as serverConfig does: sorted keys, indented, so the
// same content always gives the same bytes.
func encodeConfig(c map[string]any) ([]byte, error) {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding server configuration: %w", err)
	}
	return append(b, '\n'), nil
}

// parseRevision reads AnnotationRevision; ok is false when it is missing or unreadable
// (written by an older operator, or edited).
func parseRevision(annotation string) (*revision, bool) {
	if annotation == "" {
		return nil, false
	}
	var rev revision
	if err := json.Unmarshal([]byte(annotation), &rev); err != nil || rev.Template == nil || rev.Config == "" {
		return nil, false
	}
	return &rev, true
}

// stillCurrent reports whether a recorded revision still stands for the model: the
// model's generation is the one it was built for (an upgraded CRD may have defaulted new
// fields, which changes the spec but not the generation), or the spec shapes the same
// pods (only replicas, suspend or retunable parameters changed).
func (rev *revision) stillCurrent(model *inferencev1alpha1.RKLLMModel) bool {
	if rev.Generation == model.Generation {
		return true
	}
	h, err := specHash(model)
	return err == nil && h == rev.SpecHash
}
