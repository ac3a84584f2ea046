package edgecluster

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rkllm-operator/rkllm-operator/test/e2e/kubeletnode"
)

// gatewayStartTimeout bounds the wait for a started gateway to be ready (its cache
// synced).
const gatewayStartTimeout = time.Minute

// Gateway is a running rkllm-gateway process.
type Gateway struct {
	*Process
	// URL is the gateway's APIs (/v1/, /api/) on this machine's loopback, forwarded into
	// the node's network where the gateway listens.
	URL string
	// AdminURL is its /healthz, /readyz and /metrics, forwarded the same way.
	AdminURL string
}

// StartGateway runs the gateway binary the way the chart's Deployment would: with that
// Deployment's container arguments and its ServiceAccount (StartInCluster), inside the
// real-kubelet node's network namespace, where the model pods' addresses are (the
// gateway routes to pods, not Services) and the API server's loopback address is
// forwarded, listening on the node's address at port and port+1. identity names it in
// the decision lease, so two gateways are two replicas; args are appended (the last
// value of a repeated flag wins). It returns once /readyz answers. The Deployment itself
// is expected at 0 replicas: its pod would not reach the API server's Service.
func (c *Cluster) StartGateway(ctx context.Context, bin, namespace, deployment, identity string, port int, args ...string) (*Gateway, error) {
	d, err := c.Client.AppsV1().Deployments(namespace).Get(ctx, deployment, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the gateway's Deployment: %w", err)
	}
	if len(d.Spec.Template.Spec.Containers) != 1 {
		return nil, fmt.Errorf("deployment %s has %d containers, want 1", deployment, len(d.Spec.Template.Spec.Containers))
	}
	api := net.JoinHostPort(c.node.IP.String(), strconv.Itoa(port))
	admin := net.JoinHostPort(c.node.IP.String(), strconv.Itoa(port+1))
	all := append(append([]string{"--net=" + c.node.Runtime.NetNS(), "--", bin}, d.Spec.Template.Spec.Containers[0].Args...),
		"--listen="+api, "--admin-listen="+admin, "--identity="+identity)
	p, err := c.StartInCluster(ctx, identity, namespace, d.Spec.Template.Spec.ServiceAccountName, "nsenter", append(all, args...)...)
	if err != nil {
		return nil, err
	}
	g := &Gateway{Process: p}
	if g.URL, err = c.forward(api); err != nil {
		return nil, err
	}
	if g.AdminURL, err = c.forward(admin); err != nil {
		return nil, err
	}
	err = Poll(ctx, gatewayStartTimeout, "gateway "+identity+" to be ready", func(ctx context.Context) (bool, string, error) {
		select {
		case <-p.Exited():
			return false, "", fmt.Errorf("gateway %s exited: %v: %s", identity, p.Err(), tail(p.Log, 3000))
		default:
		}
		out, err := c.httpGet(ctx, g.AdminURL+"/readyz")
		return err == nil, out, nil
	})
	if err != nil {
		return nil, err
	}
	return g, nil
}

// forward listens on this machine's loopback and forwards each connection to addr in
// the node's network (kubectl port-forward's job), so any client here, such as Node.js,
// reaches it; Stop closes it. It returns the http:// base URL.
func (c *Cluster) forward(addr string) (string, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	f := kubeletnode.Forward(l, func(ctx context.Context) (net.Conn, error) { return c.DialContext(ctx, "tcp", addr) })
	c.mu.Lock()
	c.closers = append(c.closers, func() error { f.Close(); return nil })
	c.mu.Unlock()
	return "http://" + l.Addr().String(), nil
}
