package catalog

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

func TestReadyEndpoints(t *testing.T) {
	slice := &discoveryv1.EndpointSlice{
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("metrics"), Port: ptr.To[int32](9090)}, {Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "chat-b"}},
			{Addresses: []string{"10.0.0.1"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "chat-a"}}, // nil ready reads as ready
			{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.0.0.4"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Terminating: ptr.To(true)}},
			{Addresses: []string{"fd00::5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
		},
	}
	got := readyEndpoints(slice)
	sortEndpoints(got)
	want := []Endpoint{{ID: "[fd00::5]:8080", Address: "[fd00::5]:8080"}, {ID: "chat-a", Address: "10.0.0.1:8080"}, {ID: "chat-b", Address: "10.0.0.2:8080"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints = %+v\nwant %+v", got, want)
	}
	slice.Ports = slice.Ports[:1]
	if got := readyEndpoints(slice); got != nil {
		t.Errorf("a slice without the http port gave %+v", got)
	}
}

func TestFromObject(t *testing.T) {
	used := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	obj := &inferencev1alpha1.RKLLMModel{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "qwen", Annotations: map[string]string{inferencev1alpha1.AnnotationScaledUpAt: "2026-01-02T03:00:00Z"}},
		Spec: inferencev1alpha1.RKLLMModelSpec{ServedModelName: "qwen2.5:1.5b", Replicas: ptr.To[int32](2), Suspend: true,
			Scaling: &inferencev1alpha1.ScalingSpec{}, NPU: &inferencev1alpha1.NPUSpec{Units: ptr.To[int32](3)},
			Server: &inferencev1alpha1.ServerSpec{APIKeySecretRef: &inferencev1alpha1.SecretKeyRef{Name: "k"}}},
		Status: inferencev1alpha1.RKLLMModelStatus{LastRequestTime: &used},
	}
	m := FromObject(obj, nil)
	if m.Name != "qwen2.5:1.5b" || m.Replicas != 0 || !m.Suspended || m.Units != 3 || m.APIKey == nil || m.Scaling == nil ||
		!m.LastRequestTime.Equal(used.Time) || m.ScaledUpAt.Hour() != 3 || m.ScaledUpAt.Minute() != 0 {
		t.Errorf("model = %+v", m)
	}
	obj.Spec.ServedModelName, obj.Spec.Suspend = "", false
	if m := FromObject(obj, nil); m.Name != "qwen" || m.Replicas != 2 {
		t.Errorf("default id and replicas: %+v", m)
	}
}

func TestSnapshot(t *testing.T) {
	s := NewSnapshot()
	changed := s.Changed()
	older, newer := time.Unix(100, 0), time.Unix(200, 0)
	s.Set([]Model{
		{Key: types.NamespacedName{Namespace: "b", Name: "chat"}, Name: "chat", Created: newer},
		{Key: types.NamespacedName{Namespace: "a", Name: "chat"}, Name: "chat", Created: older},
		{Key: types.NamespacedName{Namespace: "a", Name: "coder"}, Name: "coder:7b", Created: older},
	})
	select {
	case <-changed:
	default:
		t.Error("Set did not signal a change")
	}
	m, ok := s.Get("chat")
	if !ok || m.Key.Namespace != "a" || m.Conflict != "b/chat" {
		t.Errorf("chat = %+v: want the older, naming the other", m)
	}
	if m, ok := s.Get("chat:latest"); !ok || m.Name != "chat" {
		t.Error(`"chat:latest" does not name chat`)
	}
	if _, ok := s.Get("coder:latest"); ok {
		t.Error(`"coder:latest" names coder:7b`)
	}
	if l := s.List(); len(l) != 2 || l[0].Name != "chat" || l[1].Name != "coder:7b" {
		t.Errorf("list %+v", l)
	}
}
