package processcri

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/rkllm-operator/rkllm-operator/hack/processcri/container"
	"github.com/rkllm-operator/rkllm-operator/hack/processcri/imagemap"
)

// containerSpec is what a container runs with: the kubelet's config over the image's.
func (r *Runtime) containerSpec(s *sandbox, cfg *runtimeapi.ContainerConfig, img *imagemap.Image, dir string) (*container.Spec, error) {
	args := commandLine(cfg.GetCommand(), cfg.GetArgs(), img)
	if len(args) == 0 {
		return nil, errors.New("no command: the container sets none and its image has no entrypoint or cmd")
	}
	sc := cfg.GetLinux().GetSecurityContext()
	uid, gid, err := user(sc, img)
	if err != nil {
		return nil, err
	}
	spec := &container.Spec{
		Args: args, Env: environment(img.Env, cfg.GetEnvs()), Dir: cfg.GetWorkingDir(),
		UID: uid, GID: gid, Groups: groups(sc.GetSupplementalGroups()),
		Scratch:      filepath.Join(dir, "scratch"),
		ReadOnlyRoot: sc.GetReadonlyRootfs(), NoNewPrivs: sc.GetNoNewPrivs(), Privileged: sc.GetPrivileged(),
		CapAdd: sc.GetCapabilities().GetAddCapabilities(), CapDrop: sc.GetCapabilities().GetDropCapabilities(),
		NetNS: s.netns,
	}
	if spec.Dir == "" {
		spec.Dir = img.WorkingDir
	}
	if s.pause != nil {
		spec.UTSNS = r.procPath(s.pause.Process.Pid, "ns", "uts")
		spec.IPCNS = r.procPath(s.pause.Process.Pid, "ns", "ipc")
	}
	for target, local := range img.Files {
		spec.Files = append(spec.Files, container.Bind{Source: local, Target: target, ReadOnly: true})
	}
	resolv := false
	for _, m := range cfg.GetMounts() {
		spec.Mounts = append(spec.Mounts, container.Bind{
			Source: nodePath(r.opts.NodePaths, m.GetHostPath()), Target: m.GetContainerPath(), ReadOnly: m.GetReadonly(),
		})
		resolv = resolv || m.GetContainerPath() == "/etc/resolv.conf"
	}
	if !resolv && !s.hostNetwork {
		spec.Mounts = append(spec.Mounts, container.Bind{Source: filepath.Join(s.dir, "resolv.conf"), Target: "/etc/resolv.conf", ReadOnly: true})
	}
	for _, d := range cfg.GetDevices() {
		spec.Devices = append(spec.Devices, container.Bind{
			Source: nodePath(r.opts.NodePaths, d.GetHostPath()), Target: d.GetContainerPath(),
			ReadOnly: !strings.Contains(d.GetPermissions(), "w"),
		})
	}
	return spec, nil
}

// commandLine applies OCI's rule: the container's command replaces the image's
// entrypoint (and drops its cmd), the container's args replace the image's cmd.
func commandLine(command, args []string, img *imagemap.Image) []string {
	entry, cmd := img.Entrypoint, img.Cmd
	if len(command) > 0 {
		entry, cmd = command, nil
	}
	if len(args) > 0 {
		cmd = args
	}
	return append(append([]string{}, entry...), cmd...)
}

// environment is the image's variables with the container's over them, in order.
func environment(image []string, envs []*runtimeapi.KeyValue) []string {
	index := map[string]int{}
	var out []string
	set := func(k, v string) {
		if i, ok := index[k]; ok {
			out[i] = k + "=" + v
			return
		}
		index[k] = len(out)
		out = append(out, k+"="+v)
	}
	if !hasKey(image, envs, "PATH") {
		set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	for _, kv := range image {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	for _, kv := range envs {
		set(kv.GetKey(), string(kv.GetValue()))
	}
	return out
}

func hasKey(image []string, envs []*runtimeapi.KeyValue, key string) bool {
	for _, kv := range image {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	for _, kv := range envs {
		if kv.GetKey() == key {
			return true
		}
	}
	return false
}

// user is the container's uid and gid: the security context's, else the image's, else
// root; a user name is looked up in the host's /etc/passwd (the containers' userland).
func user(sc *runtimeapi.LinuxContainerSecurityContext, img *imagemap.Image) (uint32, uint32, error) {
	imgUID, imgGID, err := img.UID()
	if err != nil {
		return 0, 0, err
	}
	var uid, gid int64
	var haveGID bool
	switch {
	case sc.GetRunAsUser() != nil:
		uid = sc.GetRunAsUser().GetValue()
	case sc.GetRunAsUsername() != "":
		if uid, gid, err = lookupUser(sc.GetRunAsUsername()); err != nil {
			return 0, 0, err
		}
		haveGID = true
	case imgUID != nil:
		uid = *imgUID
		if imgGID != nil {
			gid, haveGID = *imgGID, true
		}
	}
	if sc.GetRunAsGroup() != nil {
		gid, haveGID = sc.GetRunAsGroup().GetValue(), true
	}
	if !haveGID {
		gid = primaryGroup(uid)
	}
	if uid < 0 || uid > 1<<31 || gid < 0 || gid > 1<<31 {
		return 0, 0, fmt.Errorf("uid %d or gid %d out of range", uid, gid)
	}
	return uint32(uid), uint32(gid), nil
}

// passwd finds the first /etc/passwd entry match accepts: its uid and gid.
func passwd(match func(name string, uid int64) bool) (int64, int64, bool) {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return 0, 0, false
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 {
			continue
		}
		uid, err1 := strconv.ParseInt(fields[2], 10, 64)
		gid, err2 := strconv.ParseInt(fields[3], 10, 64)
		if err1 == nil && err2 == nil && match(fields[0], uid) {
			return uid, gid, true
		}
	}
	return 0, 0, false
}

func lookupUser(name string) (int64, int64, error) {
	uid, gid, ok := passwd(func(n string, _ int64) bool { return n == name })
	if !ok {
		return 0, 0, fmt.Errorf("user %q is not in /etc/passwd", name)
	}
	return uid, gid, nil
}

// primaryGroup is a uid's group in /etc/passwd, else 0 (containerd's choice).
func primaryGroup(uid int64) int64 {
	_, gid, ok := passwd(func(_ string, u int64) bool { return u == uid })
	if !ok {
		return 0
	}
	return gid
}

func groups(in []int64) []uint32 {
	out := make([]uint32, 0, len(in))
	for _, g := range in {
		if g >= 0 && g <= 1<<31 {
			out = append(out, uint32(g))
		}
	}
	return out
}
