//go:build e2e

package edge_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/test/e2e/edgecluster"
)

// modelOrigin serves one model file over HTTP in the real-kubelet node's network, where
// the pods' download init containers reach it, and counts the GETs of it.
type modelOrigin struct {
	data []byte
	gets atomic.Int32
	url  string
}

func (s *suite) startOrigin(path string) (*modelOrigin, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	o := &modelOrigin{data: data}
	base, err := s.c.Serve(s.ctx, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			o.gets.Add(1)
		}
		http.ServeContent(w, r, filepath.Base(path), time.Unix(0, 0), bytes.NewReader(o.data))
	}))
	if err != nil {
		return nil, err
	}
	o.url = base + "/" + filepath.Base(path)
	return o, nil
}

// checkNodeCache: model gamma downloads its file from a URL on the real-kubelet node,
// where its pod runs for real and the device plugin mounts the node's model cache. The
// first pod downloads into the cache; after the pod is deleted its replacement on the
// same node finds the file there and downloads nothing, and the model's status says so
// for each pod.
func (s *suite) checkNodeCache(simModel string) {
	s.step("model gamma downloads its file into the real-kubelet node's cache once: the next pod on the node finds it there")
	o, err := s.startOrigin(simModel)
	if err != nil {
		s.t.Fatal(err)
	}
	sum := sha256.Sum256(o.data)
	m := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: models, Name: "gamma"},
		Spec: inferencev1alpha1.RKLLMModelSpec{
			Model:        inferencev1alpha1.ModelSource{URL: o.url, SHA256: hex.EncodeToString(sum[:])},
			NodeSelector: map[string]string{"kubernetes.io/hostname": edgecluster.KubeletNode},
			Resources: &inferencev1alpha1.Resources{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
			},
		},
	}
	s.apply(m)
	first := s.waitFetch("gamma", "", inferencev1alpha1.FetchDownloaded)
	if n := o.gets.Load(); n != 1 {
		s.t.Errorf("%d GETs of the model for the first pod, want 1", n)
	}
	cached, _ := filepath.Glob(filepath.Join(s.c.ModelCache, "*-"+filepath.Base(simModel)))
	if len(cached) != 1 {
		s.t.Errorf("the node's model cache %s holds %v, want the model file", s.c.ModelCache, cached)
	}

	if err := s.c.Client.CoreV1().Pods(models).Delete(s.ctx, first, metav1.DeleteOptions{}); err != nil {
		s.t.Fatal(err)
	}
	s.waitFetch("gamma", first, inferencev1alpha1.FetchCacheHit)
	if n := o.gets.Load(); n != 1 {
		s.t.Errorf("%d GETs of the model after a second pod on the node, want still 1: the cached file was downloaded again", n)
	}
}

// waitFetch waits until the model is Ready on one pod other than notPod whose status
// entry says result from the node's cache, and returns that pod's name.
func (s *suite) waitFetch(name, notPod string, result inferencev1alpha1.FetchResult) string {
	s.t.Helper()
	var pod string
	s.waitModel(name, fmt.Sprintf("Ready with a %s from the node's cache", result), func(m *inferencev1alpha1.RKLLMModel) bool {
		if !edgecluster.IsReady(m) || len(m.Status.ModelFetches) != 1 {
			return false
		}
		f := m.Status.ModelFetches[0]
		pod = f.Pod
		return f.Pod != notPod && f.Result == result && f.Cache == inferencev1alpha1.FetchCacheNode && f.Node == edgecluster.KubeletNode &&
			f.Bytes > 0
	})
	return pod
}
