package processcri

import (
	"reflect"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri/imagemap"
)

func TestCommandLine(t *testing.T) {
	img := &imagemap.Image{Entrypoint: []string{"/entry"}, Cmd: []string{"default-arg"}}
	for _, tc := range []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"image's", nil, nil, []string{"/entry", "default-arg"}},
		{"args replace cmd", nil, []string{"a"}, []string{"/entry", "a"}},
		{"command drops cmd", []string{"/bin/x"}, nil, []string{"/bin/x"}},
		{"both", []string{"/bin/x"}, []string{"a", "b"}, []string{"/bin/x", "a", "b"}},
	} {
		if got := commandLine(tc.command, tc.args, img); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestEnvironment(t *testing.T) {
	got := environment([]string{"A=image", "B=image"}, []*runtimeapi.KeyValue{{Key: "B", Value: []byte("pod")}, {Key: "C", Value: []byte("x=y")}})
	want := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=image", "B=pod", "C=x=y"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("environment = %v, want %v", got, want)
	}
	if got := environment([]string{"PATH=/opt"}, nil); !reflect.DeepEqual(got, []string{"PATH=/opt"}) {
		t.Errorf("the image's PATH was replaced: %v", got)
	}
}

func TestUser(t *testing.T) {
	img := &imagemap.Image{User: "65532:65533"}
	for _, tc := range []struct {
		name     string
		sc       *runtimeapi.LinuxContainerSecurityContext
		uid, gid uint32
	}{
		{"image's", nil, 65532, 65533},
		{"pod's user, image's group dropped", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: &runtimeapi.Int64Value{Value: 4242}}, 4242, 0},
		{"pod's user and group", &runtimeapi.LinuxContainerSecurityContext{RunAsUser: &runtimeapi.Int64Value{Value: 1000}, RunAsGroup: &runtimeapi.Int64Value{Value: 2000}}, 1000, 2000},
		{"root by name", &runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "root"}, 0, 0},
	} {
		uid, gid, err := user(tc.sc, img)
		if err != nil || uid != tc.uid || gid != tc.gid {
			t.Errorf("%s: %d:%d %v, want %d:%d", tc.name, uid, gid, err, tc.uid, tc.gid)
		}
	}
	if _, _, err := user(&runtimeapi.LinuxContainerSecurityContext{RunAsUsername: "no-such-user-here"}, img); err == nil {
		t.Error("an unknown user name was accepted")
	}
}

func TestNodePath(t *testing.T) {
	maps := []PathMap{{Host: "/dev", Local: "/tmp/npu/dev"}, {Host: "/dev/dri", Local: "/tmp/dri"}, {Host: "/sys", Local: "/tmp/npu/sys"}}
	for in, want := range map[string]string{
		"/dev/dri/renderD129": "/tmp/dri/renderD129",
		"/dev/null":           "/tmp/npu/dev/null",
		"/dev":                "/tmp/npu/dev",
		"/device":             "/device",
		"/sys/class/drm":      "/tmp/npu/sys/class/drm",
		"/var/lib/kubelet":    "/var/lib/kubelet",
	} {
		if got := nodePath(maps, in); got != want {
			t.Errorf("nodePath(%s) = %s, want %s", in, got, want)
		}
	}
	if _, err := ParsePathMap("dev=/x"); err == nil {
		t.Error("a relative host path was accepted")
	}
}
