package edgecluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Named timeouts.
const (
	// managerStartTimeout bounds the wait for a started manager to serve its health probe.
	managerStartTimeout = time.Minute
	// rbacTimeout bounds the wait for a new RBAC binding to take effect.
	rbacTimeout = 30 * time.Second
)

// ModelClient is a controller-runtime client that knows RKLLMModels.
func (c *Cluster) ModelClient() (client.Client, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := inferencev1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	return client.New(c.Config, client.Options{Scheme: scheme})
}

// Manager is a running manager process.
type Manager struct {
	*Process
	// MetricsAddr is the loopback host:port of its metrics endpoint (HTTPS with the
	// chart's defaults).
	MetricsAddr string
}

// StartManager runs the manager binary the way the chart's Deployment would: with that
// Deployment's container arguments, as its ServiceAccount (StartInCluster), with the
// metrics and probe listeners moved to free loopback ports (no pod network here). It
// returns when the manager's /readyz answers. The Deployment itself is expected at 0
// replicas: no node here can run the image.
func (c *Cluster) StartManager(ctx context.Context, bin, namespace, deployment string) (*Manager, error) {
	d, err := c.Client.AppsV1().Deployments(namespace).Get(ctx, deployment, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading the manager's Deployment: %w", err)
	}
	if len(d.Spec.Template.Spec.Containers) != 1 {
		return nil, fmt.Errorf("deployment %s has %d containers, want 1", deployment, len(d.Spec.Template.Spec.Containers))
	}
	metrics, err := freeAddr()
	if err != nil {
		return nil, err
	}
	health, err := freeAddr()
	if err != nil {
		return nil, err
	}
	// Go's flag package keeps the last value of a repeated flag.
	args := append(append([]string{}, d.Spec.Template.Spec.Containers[0].Args...),
		"--metrics-bind-address="+metrics, "--health-probe-bind-address="+health)
	p, err := c.StartInCluster(ctx, "manager", namespace, d.Spec.Template.Spec.ServiceAccountName, bin, args...)
	if err != nil {
		return nil, err
	}
	err = Poll(ctx, managerStartTimeout, "the manager to be ready", func(ctx context.Context) (bool, string, error) {
		select {
		case <-p.Exited():
			return false, "", fmt.Errorf("the manager exited: %v: %s", p.Err(), tail(p.Log, 3000))
		default:
		}
		out, err := c.httpGet(ctx, "http://"+health+"/readyz")
		return err == nil, out, nil
	})
	if err != nil {
		return nil, err
	}
	return &Manager{Process: p, MetricsAddr: metrics}, nil
}

// GetMetrics gets the manager's /metrics over HTTPS with a bearer token (none when
// token is empty) and returns the status code and the body. The manager's certificate
// is self-signed (the chart's default), so it is not verified, as the chart's
// ServiceMonitor does not.
func (m *Manager) GetMetrics(ctx context.Context, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+m.MetricsAddr+"/metrics", nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	cl := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the manager's self-signed certificate
	}}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s: %w", req.URL, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, "", fmt.Errorf("reading %s: %w", req.URL, err)
	}
	return resp.StatusCode, string(body), nil
}

// ServiceAccountToken creates a ServiceAccount (if missing) and returns a short-lived
// token of it (TokenRequest).
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, name, err)
	}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(time.Hour.Seconds()))},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// WaitAllowed waits until the API server's authorizer lets a ServiceAccount get a
// non-resource path (RBAC bindings take effect a moment after they are created), so a
// component that caches denials (the manager's metrics filter) is asked only after.
func (c *Cluster) WaitAllowed(ctx context.Context, namespace, serviceAccount, path string) error {
	user := "system:serviceaccount:" + namespace + ":" + serviceAccount
	return Poll(ctx, rbacTimeout, user+" to be allowed to get "+path, func(ctx context.Context) (bool, string, error) {
		sar, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{
				User:                  user,
				Groups:                []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace},
				NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: path, Verb: "get"},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return sar.Status.Allowed, fmt.Sprintf("allowed %v: %s", sar.Status.Allowed, sar.Status.Reason), nil
	})
}

// WaitModel polls a model until done says so; done returns a description of what it saw.
func WaitModel(ctx context.Context, cl client.Client, timeout time.Duration, namespace, name, what string,
	done func(*inferencev1alpha1.RKLLMModel) bool) (*inferencev1alpha1.RKLLMModel, error) {
	var m inferencev1alpha1.RKLLMModel
	err := Poll(ctx, timeout, fmt.Sprintf("model %s to be %s", name, what), func(ctx context.Context) (bool, string, error) {
		if err := cl.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &m); err != nil {
			return false, err.Error(), nil
		}
		return done(&m), DescribeModel(&m), nil
	})
	return &m, err
}

// DescribeModel is a one-line summary of a model's status.
func DescribeModel(m *inferencev1alpha1.RKLLMModel) string {
	s := fmt.Sprintf("phase %s, %d/%d ready", m.Status.Phase, m.Status.ReadyReplicas, m.Spec.GetReplicas())
	if r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady); r != nil {
		s += fmt.Sprintf(", Ready=%s %s: %s", r.Status, r.Reason, r.Message)
	}
	return s
}

// IsReady reports whether the model's Ready condition is True for its current spec.
func IsReady(m *inferencev1alpha1.RKLLMModel) bool {
	r := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady)
	return r != nil && r.Status == metav1.ConditionTrue && r.ObservedGeneration == m.Generation &&
		m.Status.ObservedGeneration == m.Generation
}

// ModelPods lists a model's server pods.
func (c *Cluster) ModelPods(ctx context.Context, namespace, model string) ([]corev1.Pod, error) {
	pods, err := c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "inference.rkllm.io/model=" + model})
	if err != nil {
		return nil, err
	}
	return pods.Items, nil
}

// DescribePods is one line per pod: name, node, phase, readiness.
func DescribePods(pods []corev1.Pod) string {
	var b strings.Builder
	for _, p := range pods {
		ready := "not ready"
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				ready = "ready"
			}
		}
		node := p.Spec.NodeName
		if node == "" {
			node = "(not scheduled)"
		}
		fmt.Fprintf(&b, "  %-40s %-16s %-9s %s\n", p.Name, node, p.Status.Phase, ready)
	}
	return b.String()
}
