package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// File descriptors Start hands the init process.
const (
	specFD = 3 // the Spec as JSON, then EOF
	syncFD = 4 // closed by the exec on success; an error message otherwise
)

// Init is the container's init process: it sets the container up as the Spec on fd 3
// says and execs its program. It returns only on failure, after writing the error to fd
// 4 for Start. The caller must run it on the main thread, locked (runtime.LockOSThread
// in an init function): namespaces and capabilities are per thread, and the exec keeps
// only the calling thread's.
func Init() error {
	sync := os.NewFile(syncFD, "sync")
	err := initContainer()
	_, _ = fmt.Fprint(sync, err.Error())
	return err
}

func initContainer() error {
	unix.CloseOnExec(syncFD)
	spec, err := readSpec()
	if err != nil {
		return err
	}
	if err := joinSandbox(spec); err != nil {
		return err
	}
	root, err := buildRoot(spec)
	if err != nil {
		return err
	}
	if err := pivot(root); err != nil {
		return err
	}
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil { //nolint:gosec // the container's user, root or not, enters it
		return fmt.Errorf("creating the working folder %s: %w", spec.Dir, err)
	}
	if spec.ReadOnlyRoot {
		if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making the root filesystem read-only: %w", err)
		}
	}
	if err := unix.Chdir(spec.Dir); err != nil {
		return fmt.Errorf("entering the working folder %s: %w", spec.Dir, err)
	}
	program, err := lookPath(spec.Args[0], spec.Env)
	if err != nil {
		return err
	}
	if err := setCredentials(spec); err != nil {
		return err
	}
	err = unix.Exec(program, spec.Args, spec.Env)
	return fmt.Errorf("exec %s: %w", program, err)
}

func readSpec() (*Spec, error) {
	f := os.NewFile(specFD, "spec")
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the container spec: %w", err)
	}
	var spec Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("decoding the container spec: %w", err)
	}
	if len(spec.Args) == 0 {
		return nil, errors.New("no command: the container and its image name none")
	}
	if spec.Dir == "" {
		spec.Dir = "/"
	}
	return &spec, nil
}

// joinSandbox enters the pod's network, UTS and IPC namespaces.
func joinSandbox(spec *Spec) error {
	for _, ns := range []struct {
		path string
		kind int
	}{{spec.NetNS, unix.CLONE_NEWNET}, {spec.UTSNS, unix.CLONE_NEWUTS}, {spec.IPCNS, unix.CLONE_NEWIPC}} {
		if ns.path == "" {
			continue
		}
		fd, err := unix.Open(ns.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening the sandbox's namespace %s: %w", ns.path, err)
		}
		err = unix.Setns(fd, ns.kind)
		_ = unix.Close(fd)
		if err != nil {
			return fmt.Errorf("joining the sandbox's namespace %s: %w", ns.path, err)
		}
	}
	return nil
}

// buildRoot makes the container's root under spec.Scratch and returns it.
func buildRoot(spec *Spec) (string, error) {
	// Nothing mounted here may reach the node's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return "", fmt.Errorf("making mounts private: %w", err)
	}
	s := spec.Scratch
	if err := unix.Mount("tmpfs", s, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"); err != nil {
		return "", fmt.Errorf("mounting the scratch tmpfs: %w", err)
	}
	root := filepath.Join(s, "root")
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(s, d), 0o755); err != nil { //nolint:gosec // the root of a container whose user may not be root
			return "", err
		}
	}
	// The host's / as the image: readable, and every write lands in the tmpfs.
	opts := fmt.Sprintf("lowerdir=/,upperdir=%s,workdir=%s", filepath.Join(s, "upper"), filepath.Join(s, "work"))
	if err := unix.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mounting the root overlay: %w", err)
	}
	steps := []func(string, *Spec) error{mountSystem, mountDev}
	for _, step := range steps {
		if err := step(root, spec); err != nil {
			return "", err
		}
	}
	for _, group := range []struct {
		what  string
		binds []Bind
	}{{"image file", spec.Files}, {"mount", spec.Mounts}, {"device", spec.Devices}} {
		for _, b := range group.binds {
			if err := bind(root, b); err != nil {
				return "", fmt.Errorf("%s %s: %w", group.what, b.Target, err)
			}
		}
	}
	return root, nil
}

// mountSystem mounts /proc (of the container's PID namespace), /sys, /tmp and /run.
func mountSystem(root string, spec *Spec) error {
	mounts := []struct {
		target, fstype, data string
		flags                uintptr
	}{
		{"proc", "proc", "", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"tmp", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
		{"run", "tmpfs", "mode=755", unix.MS_NOSUID | unix.MS_NODEV},
	}
	for _, m := range mounts {
		target := filepath.Join(root, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil { //nolint:gosec // in the container's root, for its user
			return err
		}
		if err := unix.Mount(m.fstype, target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting /%s: %w", m.target, err)
		}
	}
	sys := filepath.Join(root, "sys")
	if err := unix.Mount("/sys", sys, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mounting /sys: %w", err)
	}
	if !spec.Privileged {
		if err := unix.Mount("", sys, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making /sys read-only: %w", err)
		}
	}
	return nil
}

// mountDev makes /dev: a tmpfs with the usual nodes taken from the host (or the host's
// whole /dev for a privileged container).
func mountDev(root string, spec *Spec) error {
	dev := filepath.Join(root, "dev")
	if spec.Privileged {
		if err := unix.Mount("/dev", dev, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("mounting /dev: %w", err)
		}
		return nil
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID, "mode=755"); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	for _, n := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		if err := bind(root, Bind{Source: "/dev/" + n, Target: "/dev/" + n}); err != nil {
			return fmt.Errorf("/dev/%s: %w", n, err)
		}
	}
	for _, d := range []string{"shm", "pts"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil { //nolint:gosec // /dev/shm and /dev/pts, for any user
			return err
		}
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777"); err != nil {
		return fmt.Errorf("mounting /dev/shm: %w", err)
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620"); err != nil {
		return fmt.Errorf("mounting /dev/pts: %w", err)
	}
	for link, target := range map[string]string{
		"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx",
	} {
		if err := os.Symlink(target, filepath.Join(dev, link)); err != nil {
			return err
		}
	}
	return nil
}

// bind mounts b.Source at b.Target under root, creating the target (a folder or an
// empty file, as the source is) inside the container's root.
func bind(root string, b Bind) error {
	if !path.IsAbs(b.Target) {
		return fmt.Errorf("container path %q is not absolute", b.Target)
	}
	st, err := os.Stat(b.Source)
	if err != nil {
		return err
	}
	target, err := securePath(root, b.Target)
	if err != nil {
		return err
	}
	if st.IsDir() {
		err = os.MkdirAll(target, 0o755) //nolint:gosec // a mount point in the container's root, for its user
	} else {
		err = ensureFile(target)
	}
	if err != nil {
		return fmt.Errorf("creating the mount point: %w", err)
	}
	if err := unix.Mount(b.Source, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", b.Source, err)
	}
	if b.ReadOnly {
		if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", b.Target, err)
		}
	}
	return nil
}

func ensureFile(p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil { //nolint:gosec // in the container's root, for its user
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o644) //nolint:gosec // an empty mount point in the container's root
	if err != nil {
		return err
	}
	return f.Close()
}

// securePath is target under root with every symlink on the way resolved inside root,
// so a link in the host's tree (such as /var/run -> /run) leads where it would in the
// container and never out of it.
func securePath(root, target string) (string, error) {
	cur := "/"
	parts := strings.Split(strings.Trim(path.Clean(target), "/"), "/")
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		if part == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, part)
		link, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			// Not a link (or not there yet: it will be created as a folder or file).
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("too many symbolic links in %s", target)
		}
		if path.IsAbs(link) {
			cur = "/"
		}
		parts = append(strings.Split(strings.Trim(link, "/"), "/"), parts...)
	}
	return filepath.Join(root, cur), nil
}

// pivot makes root the process's root and drops the old one.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root under the new one; unmounting "." then
	// removes the old root without needing a folder for it.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmounting the old root: %w", err)
	}
	return unix.Chdir("/")
}

// lookPath finds the program as execvp would with the container's PATH.
func lookPath(program string, env []string) (string, error) {
	if strings.Contains(program, "/") {
		if err := executable(program); err != nil {
			return "", fmt.Errorf("the container's command %s: %w", program, err)
		}
		return program, nil
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, program)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("the container's command %q: executable file not found in $PATH (%s)", program, pathEnv)
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// setCredentials applies no_new_privs, the capabilities, the groups and the user.
func setCredentials(spec *Spec) error {
	if spec.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("setting no_new_privs: %w", err)
		}
	}
	caps, err := capabilities(spec.Privileged, spec.CapAdd, spec.CapDrop)
	if err != nil {
		return err
	}
	// The bounding set limits what any exec can regain; it is per thread, and this
	// thread execs.
	for c := range len(capNames) {
		if caps&(1<<c) == 0 {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("dropping capability %s from the bounding set: %w", capNames[c], err)
			}
		}
	}
	groups := make([]int, len(spec.Groups))
	for i, g := range spec.Groups {
		groups[i] = int(g)
	}
	if err := unix.Setgroups(groups); err != nil {
		return fmt.Errorf("setting groups %v: %w", spec.Groups, err)
	}
	if err := unix.Setgid(int(spec.GID)); err != nil {
		return fmt.Errorf("setting gid %d: %w", spec.GID, err)
	}
	if spec.UID != 0 {
		// A non-root user loses every capability at the exec.
		if err := unix.Setuid(int(spec.UID)); err != nil {
			return fmt.Errorf("setting uid %d: %w", spec.UID, err)
		}
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: low32(caps), Permitted: low32(caps), Inheritable: low32(caps)},
		{Effective: low32(caps >> 32), Permitted: low32(caps >> 32), Inheritable: low32(caps >> 32)},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("setting capabilities: %w", err)
	}
	return nil
}

// low32 is the low half of a capability mask (capset takes two 32-bit words).
func low32(c capSet) uint32 { return uint32(c & 0xffffffff) } //nolint:gosec // masked to 32 bits
