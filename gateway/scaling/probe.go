package scaling

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// Prober asks a server pod whether it is working; busy says what it does ("" when
// idle). The gateway knows only the requests it sent itself: another gateway replica's
// requests, and clients of the model's Service, show only here.
type Prober func(ctx context.Context, pod *corev1.Pod) (busy string, err error)

// maxHealthBody bounds the health reply read.
const maxHealthBody = 64 << 10

// HTTPProber reads the server's /healthz (on its probe port, where client load cannot
// delay it): a run going on or requests queued make the pod busy.
func HTTPProber(c *http.Client) Prober {
	return func(ctx context.Context, pod *corev1.Pod) (string, error) {
		port := serverPort(pod)
		if port == 0 || pod.Status.PodIP == "" {
			return "", fmt.Errorf("pod %s has no address and port to ask", pod.Name)
		}
		url := "http://" + net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port))) + "/healthz"
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return "", err
		}
		resp, err := c.Do(req)
		if err != nil {
			return "", fmt.Errorf("asking pod %s whether it is busy: %w", pod.Name, err)
		}
		defer func() { _ = resp.Body.Close() }()
		var st struct {
			Running    bool `json:"running"`
			QueueDepth int  `json:"queue_depth"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, maxHealthBody)).Decode(&st); err != nil {
			return "", fmt.Errorf("reading pod %s's health (HTTP %d): %w", pod.Name, resp.StatusCode, err)
		}
		switch {
		case st.Running:
			return fmt.Sprintf("pod %s is generating, %d queued", pod.Name, st.QueueDepth), nil
		case st.QueueDepth > 0:
			return fmt.Sprintf("pod %s has %d queued", pod.Name, st.QueueDepth), nil
		}
		return "", nil
	}
}

// serverPort is the server container's probe port, or its client port when it has no
// probe port of its own.
func serverPort(pod *corev1.Pod) int32 {
	var client int32
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			switch p.Name {
			case "probes":
				return p.ContainerPort
			case "http":
				client = p.ContainerPort
			}
		}
	}
	return client
}
