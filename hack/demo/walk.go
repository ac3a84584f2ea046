package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
)

// stepTimeout bounds each wait of the walk-through.
const stepTimeout = 3 * time.Minute

const modelName = "qwen-sim"

// modelYAML is the demo's model: a simulator model file downloaded from the demo's local
// HTTP server (in the node's network) and checked against its sha256.
const modelYAML = `# A model served by rkllm-server on 3 NPUs. The file is a simulator model file (for the
# RKLLM simulator library, not a real model), downloaded by each pod's init container
# from the demo's local HTTP server and checked against its sha256.
apiVersion: inference.rkllm.io/v1alpha1
kind: RKLLMModel
metadata:
  name: qwen-sim
  namespace: default
spec:
  model:
    url: %s
    sha256: %s
  replicas: 3
  parameters:
    maxContextLen: 4096
    temperature: "0.8"
  resources:
    requests:
      memory: 1Gi
    limits:
      memory: 2Gi
`

type walker struct {
	p         paths
	r         *ready
	ctx       context.Context
	cl        client.Client
	kctl      string
	streamCmd string
}

// walkThrough shows what the operator does with a model, with the commands a user
// would type and their output.
func walkThrough(p paths, r *ready) error {
	ctx, stop := signalContext()
	defer stop()
	cfg, err := clientcmd.BuildConfigFromFlags("", r.Kubeconfig)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := inferencev1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	w := &walker{p: p, r: r, ctx: ctx, cl: cl, kctl: filepath.Join(p.k8sBin, "kubectl")}
	return w.walk()
}

func (w *walker) walk() error {
	for _, step := range []func() error{w.cluster, w.apply, w.logs, w.stream, w.scale, w.suspend, w.remove, w.gateway, w.explore} {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// cluster shows the nodes and the release.
func (w *walker) cluster() error {
	heading("The cluster")
	say(`Three RK3588 nodes, each with one rockchip.com/npu:
  %s, %s  simulated by kwok: it keeps them Ready and marks their pods Running
                                 and Ready without running anything (no probes run there);
  %s                 a real kubelet on the process runtime (hack/processcri): every
                                 pod scheduled to it runs for real, as processes in the node's
                                 own namespaces, with an address of its own (CNI bridge) that
                                 the kubelet probes. Its images map to this machine's builds
                                 (%s), rkllm-server's runtime library to the RKLLM simulator.
                                 Its NPU comes from the real rknpu-device-plugin registering
                                 with it (fake RK3588 files under %s/npu-root).
The operator's manager runs here as a process with the chart's Deployment arguments and
its ServiceAccount's token: it needs the API server's Service address, which no node here
routes (there is no kube-proxy).`,
		edgecluster.KwokNode1, edgecluster.KwokNode2, edgecluster.KubeletNode, filepath.Join(w.r.WorkDir, "images.yaml"), w.r.WorkDir)
	if err := w.kubectl("get", "nodes", "-o", "custom-columns=NODE:.metadata.name,NPU:.status.allocatable.rockchip\\.com/npu,SOC:.metadata.labels.rockchip\\.com/npu\\.soc,ARCH:.status.nodeInfo.architecture"); err != nil {
		return err
	}
	return w.helm("list", "-n", namespace)
}

// apply applies the model and shows it Ready with a pod on each node.
func (w *walker) apply() error {
	heading("1. Apply a model with 3 replicas")
	file := filepath.Join(w.p.state, modelName+".yaml")
	doc := fmt.Sprintf(modelYAML, w.r.ModelURL, w.r.ModelSHA256)
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		return err
	}
	say("%s:\n%s", file, indent(doc))
	if err := w.kubectl("apply", "-f", file); err != nil {
		return err
	}
	if err := w.kubectl("wait", "--for=condition=Ready", "rkllmmodel/"+modelName, "--timeout=3m"); err != nil {
		return err
	}
	if err := w.kubectl("get", "rkllmmodels", "-o", "wide"); err != nil {
		return err
	}
	if err := w.kubectl("get", "pods", "-l", "inference.rkllm.io/model="+modelName, "-o", "wide"); err != nil {
		return err
	}
	say("One pod per node: each node has one NPU and each pod takes one. The pod on %s is", edgecluster.KubeletNode)
	say("Ready because the kubelet's readiness probe reached rkllm-server at its pod IP.")
	return nil
}

// realPod is the model's pod on the real-kubelet node and its IP.
func (w *walker) realPod() (string, string, error) {
	out, err := w.output("get", "pods", "-l", "inference.rkllm.io/model="+modelName, "--field-selector", "spec.nodeName="+edgecluster.KubeletNode,
		"-o", `jsonpath={.items[0].metadata.name} {.items[0].status.podIP}`)
	if err != nil {
		return "", "", fmt.Errorf("%w: %s", err, out)
	}
	name, ip, ok := strings.Cut(strings.TrimSpace(out), " ")
	if !ok || ip == "" {
		return "", "", fmt.Errorf("no pod of %s with an IP on %s: %q", modelName, edgecluster.KubeletNode, out)
	}
	return name, ip, nil
}

// logs shows the real pod's init container (the download) and server logs.
func (w *walker) logs() error {
	heading("2. kubectl logs: the download, then the server")
	pod, _, err := w.realPod()
	if err != nil {
		return err
	}
	if err := w.kubectl("logs", pod, "-c", "fetch-model"); err != nil {
		return err
	}
	return w.kubectl("logs", pod, "-c", "server", "--tail=8")
}

// scale scales past the cluster's NPUs and shows the scheduler's reason in the status.
func (w *walker) scale() error {
	heading("4. Scale to 4: the fourth pod has no NPU to go to")
	if err := w.kubectl("scale", "rkllmmodel/"+modelName, "--replicas=4"); err != nil {
		return err
	}
	if _, err := edgecluster.WaitModel(w.ctx, w.cl, stepTimeout, "default", modelName, "Unschedulable", func(m *inferencev1alpha1.RKLLMModel) bool {
		r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
		return m.Status.ObservedGeneration == m.Generation && r != nil && r.Reason == inferencev1alpha1.ReasonUnschedulable
	}); err != nil {
		return err
	}
	if err := w.kubectl("get", "rkllmmodel", modelName, "-o", `jsonpath=Ready={.status.conditions[?(@.type=="Ready")].status} reason={.status.conditions[?(@.type=="Ready")].reason}{"\n"}message={.status.conditions[?(@.type=="Ready")].message}{"\n"}`); err != nil {
		return err
	}
	return w.kubectl("get", "pods", "-l", "inference.rkllm.io/model="+modelName, "-o", "wide")
}

// suspend suspends the model.
func (w *walker) suspend() error {
	heading("5. Suspend: no pods, everything else kept")
	if err := w.kubectl("patch", "rkllmmodel", modelName, "--type=merge", "-p", `{"spec":{"suspend":true}}`); err != nil {
		return err
	}
	if _, err := edgecluster.WaitModel(w.ctx, w.cl, stepTimeout, "default", modelName, "Suspended with no pods", func(m *inferencev1alpha1.RKLLMModel) bool {
		return m.Status.Phase == inferencev1alpha1.PhaseSuspended && m.Status.Replicas == 0
	}); err != nil {
		return err
	}
	if err := w.kubectl("get", "deployment,service,configmap", "-l", "inference.rkllm.io/model="+modelName); err != nil {
		return err
	}
	return w.kubectl("get", "rkllmmodel", modelName)
}

// remove deletes the model and shows its children gone.
func (w *walker) remove() error {
	heading("6. Delete: the garbage collector removes what the model owned")
	if err := w.kubectl("delete", "rkllmmodel", modelName, "--wait=true"); err != nil {
		return err
	}
	if err := edgecluster.Poll(w.ctx, stepTimeout, "the model's children to be gone", func(context.Context) (bool, string, error) {
		out, err := w.output("get", "deployment,replicaset,pod,service,configmap", "-l", "inference.rkllm.io/model="+modelName, "-o", "name")
		return err == nil && strings.TrimSpace(out) == "", out, err
	}); err != nil {
		return err
	}
	return w.kubectl("get", "deployment,replicaset,pod,service,configmap", "-l", "inference.rkllm.io/model="+modelName)
}

// stream streams tokens from the real pod's server through its pod IP.
func (w *walker) stream() error {
	heading("3. Stream tokens from rkllm-server through the pod IP (RKLLM simulator library)")
	_, ip, err := w.realPod()
	if err != nil {
		return err
	}
	say(`This server runs the simulator: its tokens are made up by the simulator, not by a model.
The pod IP is in the node's own network namespace (nothing on this machine's network
changes), so the request enters it with nsenter. The model's Service is not used: its
ClusterIP would need kube-proxy, which does not run here.`)
	w.streamCmd = edgecluster.StreamCommand(w.r.NodeNetNS, ip+":8080", "Why run LLMs on an RK3588?")
	say("$ %s", w.streamCmd)
	out, err := exec.CommandContext(w.ctx, "sh", "-c", w.streamCmd).CombinedOutput() //nolint:gosec // the command printed above
	fmt.Print(string(out))
	if err != nil {
		say("(curl failed: %v; is curl installed?)", err)
	}
	return nil
}

// explore says where to go next.
func (w *walker) explore() error {
	heading("Explore")
	say(`The cluster keeps running. In this shell:

  export KUBECONFIG=%s
  export PATH=%s:$PATH
  kubectl apply -f %s     # the model again
  kubectl get rkllmmodels,pods -o wide
  kubectl logs %s -c server
  %s -n %s status %s
  %s   # with the new pod's IP

The gateway, one URL for both models (the first request for the one not loaded swaps):
  curl %s/v1/models
  curl %s/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":"coder","messages":[{"role":"user","content":"Hi"}]}'

Logs of every component: %s
Stop everything: make demo-down`,
		w.r.Kubeconfig, w.p.k8sBin, filepath.Join(w.p.state, modelName+".yaml"), "$(kubectl get pods -l inference.rkllm.io/model="+modelName+" --field-selector spec.nodeName="+edgecluster.KubeletNode+" -o name)", w.p.helm, namespace, release, w.streamCmd, w.r.GatewayURL, w.r.GatewayURL, w.r.LogDir)
	return nil
}

func heading(s string) { fmt.Printf("\n=== %s\n\n", s) }

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

// kubectl runs kubectl, showing the command and its output.
func (w *walker) kubectl(args ...string) error { return w.show(w.kctl, "kubectl", args...) }

func (w *walker) helm(args ...string) error { return w.show(w.p.helm, "helm", args...) }

func (w *walker) show(bin, name string, args ...string) error {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if strings.ContainsAny(a, ` {}"[]()?=@*\`) && !strings.HasPrefix(a, "--") {
			quoted[i] = "'" + a + "'"
		}
	}
	fmt.Printf("$ %s %s\n", name, strings.Join(quoted, " "))
	cmd := exec.CommandContext(w.ctx, bin, args...) //nolint:gosec // the demo's own tools
	cmd.Env = append(os.Environ(), "KUBECONFIG="+w.r.Kubeconfig, "HELM_CACHE_HOME="+filepath.Join(w.r.WorkDir, "helm", "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(w.r.WorkDir, "helm", "config"), "HELM_DATA_HOME="+filepath.Join(w.r.WorkDir, "helm", "data"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Print(indent(out.String()))
	if err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

func (w *walker) output(args ...string) (string, error) {
	cmd := exec.CommandContext(w.ctx, w.kctl, args...) //nolint:gosec // the demo's own kubectl
	cmd.Env = append(os.Environ(), "KUBECONFIG="+w.r.Kubeconfig)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
