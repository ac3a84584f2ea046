package edgecluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// Timeouts of the workloads.
const (
	inClusterTokenLifetime = 24 * time.Hour
	serverReadyTimeout     = time.Minute
	endpointTimeout        = 30 * time.Second
)

// StartInCluster runs bin as if it were a container of a pod in namespace with
// serviceAccount: in a private mount namespace where /var/run/secrets/kubernetes.io/
// serviceaccount holds a token of that ServiceAccount (TokenRequest, valid for 24h), the
// cluster's CA and the namespace, and with KUBERNETES_SERVICE_HOST/PORT set, so
// client-go's in-cluster configuration, and with it the RBAC the ServiceAccount is
// bound to, is exactly what the pod would have. Needs root and util-linux.
func (c *Cluster) StartInCluster(ctx context.Context, name, namespace, serviceAccount, bin string, args ...string) (*Process, error) {
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(inClusterTokenLifetime.Seconds()))},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting a token for %s/%s: %w", namespace, serviceAccount, err)
	}
	ca := c.Config.CAData
	if len(ca) == 0 && c.Config.CAFile != "" {
		if ca, err = os.ReadFile(c.Config.CAFile); err != nil {
			return nil, err
		}
	}
	// /var/run is usually a link to /run: the folder mounted over is its target.
	runDir, err := filepath.EvalSymlinks("/var/run")
	if err != nil {
		return nil, err
	}
	fakeRun := filepath.Join(c.WorkDir, "pods", name, "run")
	sa := filepath.Join(fakeRun, "secrets", "kubernetes.io", "serviceaccount")
	if err := os.MkdirAll(sa, 0o750); err != nil {
		return nil, err
	}
	for file, data := range map[string][]byte{"token": []byte(tr.Status.Token), "ca.crt": ca, "namespace": []byte(namespace)} {
		if err := os.WriteFile(filepath.Join(sa, file), data, 0o600); err != nil {
			return nil, err
		}
	}
	host, port, err := c.APIServerHostPort()
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (Debian package util-linux / mount): %w", tool, err)
		}
	}
	script := fmt.Sprintf("set -e\nmount --bind %s %s\nexec %s \"$@\"", shellQuote(fakeRun), shellQuote(runDir), shellQuote(bin))
	env := []string{"KUBERNETES_SERVICE_HOST=" + host, "KUBERNETES_SERVICE_PORT=" + port, "POD_NAMESPACE=" + namespace}
	return c.Start(ctx, name, env, "unshare", append([]string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, name}, args...)...)
}

// WriteSimModel writes a simulator model file (the simulator's default model: replies
// of 8 to 32 tokens at 15 tokens/s) at path. It is a file for the RKLLM simulator, not a
// model.
func WriteSimModel(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	return simulator.WriteModel(path, simulator.DefaultModel())
}

// StartServer runs rkllm-server with the simulator library lib and the simulator model
// file modelPath, listening on PodIP:8080 and its probes on PodIP:8081, where the
// kubelet probes the pods of the real-kubelet node, and on a Unix socket in the work
// folder. It returns when /readyz answers 200.
func (c *Cluster) StartServer(ctx context.Context, bin, lib, abi, modelPath string) (*Process, error) {
	dir := filepath.Join(c.WorkDir, "server")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	listen := c.PodIP + ":8080"
	p, err := c.Start(ctx, "rkllm-server", nil, bin, "serve",
		"--model", modelPath, "--model-dir", filepath.Dir(modelPath),
		"--runtime-lib", lib, "--runtime-abi", abi,
		"--listen", listen, "--probe-listen", c.PodIP+":8081", "--socket", filepath.Join(dir, "rkllm.sock"), "--log-format", "text")
	if err != nil {
		return nil, err
	}
	err = Poll(ctx, serverReadyTimeout, "rkllm-server to be ready on "+listen, func(ctx context.Context) (bool, string, error) {
		select {
		case <-p.Exited():
			return false, "", fmt.Errorf("rkllm-server exited: %v: %s", p.Err(), tail(p.Log, 2000))
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+listen+"/readyz", nil)
		if err != nil {
			return false, "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error(), nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// ServiceEndpoint resolves a Service's port to the address behind it on node, as the
// EndpointSlice controller and kube-proxy would: a ready pod on node that the Service's
// selector selects, and the container port the Service port's targetPort names. (The
// controller cannot do it here: the API server refuses EndpointSlices with this cluster's
// loopback pod addresses, and there is no kube-proxy.)
func (c *Cluster) ServiceEndpoint(ctx context.Context, namespace, service, portName, node string) (string, error) {
	svc, err := c.Client.CoreV1().Services(namespace).Get(ctx, service, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading Service %s/%s: %w", namespace, service, err)
	}
	i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == portName })
	if i < 0 {
		return "", fmt.Errorf("service %s/%s has no port named %s", namespace, service, portName)
	}
	target := svc.Spec.Ports[i].TargetPort
	if len(svc.Spec.Selector) == 0 {
		return "", fmt.Errorf("service %s/%s has no selector", namespace, service)
	}
	var addr string
	err = Poll(ctx, endpointTimeout, fmt.Sprintf("a ready pod of Service %s/%s on %s", namespace, service, node), func(ctx context.Context) (bool, string, error) {
		pods, err := c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{
			LabelSelector: labels.SelectorFromSet(svc.Spec.Selector).String(), FieldSelector: "spec.nodeName=" + node,
		})
		if err != nil {
			return false, err.Error(), nil
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil || p.Status.PodIP == "" || !podReady(&p) {
				continue
			}
			port := target.IntValue()
			if target.Type == intstr.String {
				port = namedPort(&p, target.StrVal)
			}
			if port == 0 {
				return false, "", fmt.Errorf("pod %s has no container port %s, the target of Service %s/%s port %s", p.Name, target.String(), namespace, service, portName)
			}
			addr = net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port))
			return true, "", nil
		}
		return false, fmt.Sprintf("%d pods selected on %s, none ready", len(pods.Items), node), nil
	})
	return addr, err
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// namedPort is the number of a pod's container port called name, or 0.
func namedPort(p *corev1.Pod, name string) int {
	for _, ctr := range p.Spec.Containers {
		for _, cp := range ctr.Ports {
			if cp.Name == name {
				return int(cp.ContainerPort)
			}
		}
	}
	return 0
}

// StreamCommand is a shell command that sends the server at addr a JSON-RPC request
// whose reply streams one token per line (NDJSON).
func StreamCommand(addr, prompt string) string {
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"input":{"role":"user","input_type":"RKLLM_INPUT_PROMPT","prompt_input":%q},"stream":true}}`, prompt)
	return fmt.Sprintf("curl -sN http://%s/rpc -H 'Content-Type: application/json' -d '%s'", addr, strings.ReplaceAll(body, "'", `'\''`))
}

func ptr[T any](v T) *T { return &v }

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// httpGet gets url and returns the status line, or an error for a status other than 200.
func (c *Cluster) httpGet(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err.Error(), err
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.Status, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return resp.Status, nil
}
