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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

// Timeouts of the workloads.
const (
	inClusterTokenLifetime = 24 * time.Hour
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

// ServeFiles serves the files of dir over HTTP on the node's address, in its network, as
// a local model server the pods download from (their init containers), and returns the
// base URL. Stop closes it.
func (c *Cluster) ServeFiles(ctx context.Context, dir string) (string, error) {
	return c.Serve(ctx, http.FileServer(http.Dir(dir)))
}

// Serve serves h over HTTP on the node's address, in its network, where the pods reach
// it, and returns the base URL. Stop closes it.
func (c *Cluster) Serve(ctx context.Context, h http.Handler) (string, error) {
	l, err := c.node.Runtime.Listen(ctx, "tcp", net.JoinHostPort(c.node.IP.String(), "0"))
	if err != nil {
		return "", fmt.Errorf("listening in the node's network: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	c.mu.Lock()
	c.closers = append(c.closers, srv.Close)
	c.mu.Unlock()
	return "http://" + l.Addr().String(), nil
}

// Exec runs cmd in a container of a pod on the real-kubelet node through the runtime's
// CRI socket (ExecSync, as the kubelet's exec probes) and returns its output and exit
// code.
func (c *Cluster) Exec(ctx context.Context, namespace, pod, container string, cmd ...string) (string, int32, error) {
	conn, err := grpc.NewClient("unix://"+c.node.Runtime.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", 0, err
	}
	defer func() { _ = conn.Close() }()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{
		State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{
			"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": pod, "io.kubernetes.container.name": container,
		},
	}})
	if err != nil {
		return "", 0, err
	}
	if len(list.GetContainers()) != 1 {
		return "", 0, fmt.Errorf("%d running containers %s in pod %s/%s on %s", len(list.GetContainers()), container, namespace, pod, KubeletNode)
	}
	resp, err := rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: list.GetContainers()[0].GetId(), Cmd: cmd, Timeout: 60})
	if err != nil {
		return "", 0, err
	}
	return string(resp.GetStdout()) + string(resp.GetStderr()), resp.GetExitCode(), nil
}

// ServiceEndpoint resolves a Service's port to the address behind it on node, as the
// EndpointSlice controller and kube-proxy would: a ready pod on node that the Service's
// selector selects, and the container port the Service port's targetPort names. (The
// is no kube-proxy: the Service's address leads nowhere on this machine, and the kwok
// nodes' endpoints exist nowhere.)
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

// StreamCommand is a shell command that sends the server at addr, in the network
// namespace netns (the real-kubelet node's), a JSON-RPC request whose reply streams one
// token per line (NDJSON).
func StreamCommand(netns, addr, prompt string) string {
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"rkllm.run","params":{"input":{"role":"user","input_type":"RKLLM_INPUT_PROMPT","prompt_input":%q},"stream":true}}`, prompt)
	return fmt.Sprintf("nsenter --net=%s curl -sN http://%s/rpc -H 'Content-Type: application/json' -d '%s'", netns, addr, strings.ReplaceAll(body, "'", `'\''`))
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
