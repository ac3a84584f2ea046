package scaling

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func npu(n string) corev1.ResourceList {
	return corev1.ResourceList{"rockchip.com/npu": resource.MustParse(n)}
}

func TestEligible(t *testing.T) {
	node := func(mutate func(*corev1.Node)) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"rockchip.com/npu.soc": "rk3588"}},
			Status: corev1.NodeStatus{Allocatable: npu("1"), Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
		if mutate != nil {
			mutate(n)
		}
		return n
	}
	soc := &corev1.PodSpec{NodeSelector: map[string]string{"rockchip.com/npu.soc": "rk3588"}}
	cases := []struct {
		name string
		node *corev1.Node
		spec *corev1.PodSpec
		want bool
	}{
		{"matching", node(nil), soc, true},
		{"other SoC", node(func(n *corev1.Node) { n.Labels["rockchip.com/npu.soc"] = "rk3576" }), soc, false},
		{"not ready", node(func(n *corev1.Node) { n.Status.Conditions[0].Status = corev1.ConditionFalse }), soc, false},
		{"cordoned", node(func(n *corev1.Node) { n.Spec.Unschedulable = true }), soc, false},
		{"no NPU", node(func(n *corev1.Node) { n.Status.Allocatable = nil }), soc, false},
		{"untolerated taint", node(func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "rockchip.com/npu", Effect: corev1.TaintEffectNoSchedule}}
		}), soc, false},
		{"tolerated taint", node(func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "rockchip.com/npu", Effect: corev1.TaintEffectNoSchedule}}
		}), &corev1.PodSpec{Tolerations: []corev1.Toleration{{Key: "rockchip.com/npu", Operator: corev1.TolerationOpExists}}}, true},
		{"a PreferNoSchedule taint does not exclude", node(func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "busy", Effect: corev1.TaintEffectPreferNoSchedule}}
		}), soc, true},
		{"required node affinity", node(nil), &corev1.PodSpec{Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{"other"}}},
			}}}}}}, false},
	}
	for _, tc := range cases {
		if got := eligible(tc.node, tc.spec); got != tc.want {
			t.Errorf("%s: eligible = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPodUnits(t *testing.T) {
	cases := []struct {
		name string
		pod  corev1.PodSpec
		want int64
	}{
		{"requests", corev1.PodSpec{Containers: []corev1.Container{{Resources: corev1.ResourceRequirements{Requests: npu("2")}}}}, 2},
		{"limits only", corev1.PodSpec{Containers: []corev1.Container{{Resources: corev1.ResourceRequirements{Limits: npu("1")}}}}, 1},
		{"summed over containers", corev1.PodSpec{Containers: []corev1.Container{
			{Resources: corev1.ResourceRequirements{Requests: npu("1")}}, {Resources: corev1.ResourceRequirements{Requests: npu("1")}}}}, 2},
		{"an init container asking more", corev1.PodSpec{
			InitContainers: []corev1.Container{{Resources: corev1.ResourceRequirements{Requests: npu("3")}}},
			Containers:     []corev1.Container{{Resources: corev1.ResourceRequirements{Requests: npu("1")}}}}, 3},
		{"none", corev1.PodSpec{Containers: []corev1.Container{{}}}, 0},
	}
	for _, tc := range cases {
		if got := podUnits(&corev1.Pod{Spec: tc.pod}); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestUnschedulableForNPU(t *testing.T) {
	cond := func(reason, msg string) *corev1.Pod {
		return &corev1.Pod{Status: corev1.PodStatus{Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: reason, Message: msg}}}}
	}
	if !unschedulableForNPU(cond(corev1.PodReasonUnschedulable, "0/3 nodes are available: 3 Insufficient rockchip.com/npu.")) {
		t.Error("an NPU shortage was not recognised")
	}
	if unschedulableForNPU(cond(corev1.PodReasonUnschedulable, "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.")) {
		t.Error("a selector mismatch was taken for an NPU shortage: evicting would not help")
	}
	if unschedulableForNPU(cond("SchedulingGated", "rockchip.com/npu")) {
		t.Error("another reason was taken for an NPU shortage")
	}
}
