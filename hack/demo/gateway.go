package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
)

// gatewayYAML is the swap's two models: at zero, started by the gateway on request,
// both only on the real-kubelet node, whose one NPU they share.
const gatewayYAML = `# Two models for one NPU: the gateway starts each on its first request and swaps out
# the other when it is idle. Simulator model files (not real models).
apiVersion: inference.rkllm.io/v1alpha1
kind: RKLLMModel
metadata:
  name: chat
  namespace: default
spec:
  model: {url: %[1]s, sha256: %[2]s}
  replicas: 0
  scaling: {minReplicas: 0, maxReplicas: 1, scaleDownDelay: 15m}
  nodeSelector: {kubernetes.io/hostname: %[3]s}
  resources: {requests: {memory: 256Mi}, limits: {memory: 1Gi}}
---
apiVersion: inference.rkllm.io/v1alpha1
kind: RKLLMModel
metadata:
  name: coder
  namespace: default
spec:
  model: {url: %[1]s, sha256: %[2]s}
  replicas: 0
  scaling: {minReplicas: 0, maxReplicas: 1, scaleDownDelay: 15m}
  nodeSelector: {kubernetes.io/hostname: %[3]s}
  resources: {requests: {memory: 256Mi}, limits: {memory: 1Gi}}
`

// gatewayRequestTimeout bounds one request through the gateway, an activation included.
const gatewayRequestTimeout = 5 * time.Minute

// gateway shows one URL for two models that share the real-kubelet node's NPU: the
// first request for each starts it, the second swaps, with the times.
func (w *walker) gateway() error {
	heading("7. One URL for every model: the gateway swaps two models on one NPU")
	file := filepath.Join(w.p.state, "gateway-models.yaml")
	doc := fmt.Sprintf(gatewayYAML, w.r.ModelURL, w.r.ModelSHA256, edgecluster.KubeletNode)
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		return err
	}
	say("%s:\n%s", file, indent(doc))
	if err := w.kubectl("apply", "-f", file); err != nil {
		return err
	}
	say(`The gateway (rkllm-gateway, the chart's gateway Deployment) serves every model at one URL,
%s here (kubectl port-forward svc/rkllm-operator-gateway would give it on a real cluster).`, w.r.GatewayURL)
	say("$ curl %s/v1/models", w.r.GatewayURL)
	if err := w.gatewayGet("/v1/models"); err != nil {
		return err
	}
	for _, m := range []string{"chat", "coder", "chat"} {
		say("\n$ curl %s/v1/chat/completions -d '{\"model\":%q,...}'", w.r.GatewayURL, m)
		start := time.Now()
		reply, err := w.gatewayChat(m)
		if err != nil {
			return err
		}
		say("  %s  (%s)", reply, time.Since(start).Round(100*time.Millisecond))
		if err := w.activationTimes(m); err != nil {
			return err
		}
		if err := w.kubectl("get", "rkllmmodels", "chat", "coder"); err != nil {
			return err
		}
	}
	say("\nEach activation and eviction is an Event on the models (and a metric of the gateway):")
	for _, m := range []string{"chat", "coder"} {
		if err := w.kubectl("events", "--for", "rkllmmodel/"+m); err != nil {
			return err
		}
	}
	return nil
}

// gatewayGet prints a GET through the gateway.
func (w *walker) gatewayGet(path string) error {
	ctx, cancel := context.WithTimeout(w.ctx, gatewayRequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.r.GatewayURL+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, data, "", "  ") == nil {
		data = pretty.Bytes()
	}
	fmt.Print(indent(string(data)))
	return nil
}

// gatewayChat asks model a short question through the gateway and returns the reply.
func (w *walker) gatewayChat(model string) (string, error) {
	ctx, cancel := context.WithTimeout(w.ctx, gatewayRequestTimeout)
	defer cancel()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Hello!"}],"max_tokens":12}`, model)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.r.GatewayURL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	var r struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(data, &r) != nil || len(r.Choices) == 0 {
		return "", fmt.Errorf("chat with %s through the gateway: %s %s", model, resp.Status, data)
	}
	return fmt.Sprintf("%s: %q", r.Model, r.Choices[0].Message.Content), nil
}

// activationTimes prints how the model's current pod came up: scheduled, its model
// file fetched (the init container), the server loaded and Ready, from the pod's own
// record.
func (w *walker) activationTimes(model string) error {
	list, err := w.pods(model)
	if err != nil || len(list) == 0 {
		return err
	}
	p := list[0]
	created := p.CreationTimestamp.Time
	var parts []string
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionTrue {
			parts = append(parts, fmt.Sprintf("scheduled +%s", c.LastTransitionTime.Sub(created).Round(100*time.Millisecond)))
		}
	}
	for _, s := range p.Status.InitContainerStatuses {
		if t := s.State.Terminated; t != nil {
			parts = append(parts, fmt.Sprintf("%s done +%s", s.Name, t.FinishedAt.Sub(created).Round(100*time.Millisecond)))
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			parts = append(parts, fmt.Sprintf("model loaded, Ready +%s", c.LastTransitionTime.Sub(created).Round(100*time.Millisecond)))
		}
	}
	say("  pod %s, from its creation: %s (the API's times are in whole seconds)", p.Name, strings.Join(parts, ", "))
	return nil
}

// pods are the model's pods that are not being deleted.
func (w *walker) pods(model string) ([]corev1.Pod, error) {
	var list corev1.PodList
	if err := w.cl.List(w.ctx, &list, client.InNamespace("default"), client.MatchingLabels{"inference.rkllm.io/model": model}); err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}
