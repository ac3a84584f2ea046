package kubeletnode

import (
	"context"
	"reflect"
	"slices"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// TestCommandMapsContainerPaths: a container's process run on the host sees its
// arguments and environment with container paths turned into the host paths behind
// the container's mounts, the kubelet's /var/lib taken to the node's folder.
func TestCommandMapsContainerPaths(t *testing.T) {
	n := &Node{opts: Options{WorkDir: "/work/node"}, CRI: &FakeCRI{ctx: context.Background()}}
	req := &runtimeapi.CreateContainerRequest{Config: &runtimeapi.ContainerConfig{
		Args: []string{"fetch", "--url", "http://127.0.0.1:1/m", "--dest", "/models/abc-m", "--result-file", "/dev/termination-log",
			"--cache-dir=", "--other=/models/x", "/modelsx"},
		Envs: []*runtimeapi.KeyValue{{Key: "RKNPU_MODEL_CACHE", Value: []byte("/var/cache/rkllm")}, {Key: "RKNPU_SOC", Value: []byte("rk3588")}},
		Mounts: []*runtimeapi.Mount{
			{ContainerPath: "/models", HostPath: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/models"},
			{ContainerPath: "/dev/termination-log", HostPath: "/var/lib/kubelet/pods/u/containers/fetch/1"},
			{ContainerPath: "/var/cache/rkllm", HostPath: "/tmp/cluster/model-cache"},
		},
	}}
	cmd := n.Command(req, "/bin/rkllm-server")
	want := []string{"/bin/rkllm-server", "fetch", "--url", "http://127.0.0.1:1/m",
		"--dest", "/work/node/var-lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/models/abc-m",
		"--result-file", "/work/node/var-lib/kubelet/pods/u/containers/fetch/1",
		"--cache-dir=", "--other=/work/node/var-lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/models/x", "/modelsx"}
	if !reflect.DeepEqual(cmd.Args, want) {
		t.Errorf("args\n%q\nwant\n%q", cmd.Args, want)
	}
	for _, e := range []string{"RKNPU_MODEL_CACHE=/tmp/cluster/model-cache", "RKNPU_SOC=rk3588"} {
		if !slices.Contains(cmd.Env, e) {
			t.Errorf("environment lacks %s", e)
		}
	}
}
