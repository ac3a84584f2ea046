// Package container runs one container of the process runtime: a host process in
// namespaces of its own, with the host's userland as its root filesystem.
//
// Start (in the runtime) starts this program's `container-init` subcommand in a new
// mount and PID namespace; Init (in that child) joins the pod's network, UTS and IPC
// namespaces (the sandbox's), builds the root on a tmpfs (an overlay of the host's /
// whose writes land in the tmpfs, fresh /proc, /dev, /tmp and /run, the host's /sys
// read-only), places the image's files and the kubelet's mounts and devices at their
// container paths, pivots into it, applies the user, groups, capabilities and
// no_new_privs, and execs the container's program, which so becomes PID 1 of its PID
// namespace: when it dies, everything it started dies with it. Every mount lives in the
// container's mount namespace and vanishes with it; nothing is written to the host's
// filesystem but through the kubelet's own volumes.
//
// A failure before the exec (a missing program, a mount that cannot be made) is reported
// to Start, which returns it as the start error, instead of becoming an exit code.
package container

// Spec is what the init process needs; Start sends it over a pipe as JSON.
type Spec struct {
	// Args is the program and its arguments. A program without a slash is looked up in
	// the PATH of Env inside the container.
	Args []string `json:"args"`
	// Env is the environment (KEY=VALUE).
	Env []string `json:"env"`
	// Dir is the working folder (created if missing, as other runtimes do).
	Dir string `json:"dir"`
	// UID, GID and Groups are the process's user, group and supplementary groups.
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	// NetNS, UTSNS and IPCNS are the namespace files of the pod's sandbox to join.
	NetNS string `json:"netns"`
	UTSNS string `json:"utsns"`
	IPCNS string `json:"ipcns"`
	// Scratch is an empty folder where the root is built (on a tmpfs mounted there in
	// the container's mount namespace only).
	Scratch string `json:"scratch"`
	// Files are the image's files; Mounts the kubelet's volumes; Devices the device
	// nodes (the device plugin's among them).
	Files   []Bind `json:"files,omitempty"`
	Mounts  []Bind `json:"mounts,omitempty"`
	Devices []Bind `json:"devices,omitempty"`
	// ReadOnlyRoot makes the root filesystem read-only (the mounts keep their own mode).
	ReadOnlyRoot bool `json:"readOnlyRoot,omitempty"`
	// NoNewPrivs sets no_new_privs (allowPrivilegeEscalation: false).
	NoNewPrivs bool `json:"noNewPrivs,omitempty"`
	// Privileged keeps every capability and gives the host's /dev and a writable /sys.
	Privileged bool `json:"privileged,omitempty"`
	// CapAdd and CapDrop change the default capability set of a root process (names
	// with or without CAP_, or ALL).
	CapAdd  []string `json:"capAdd,omitempty"`
	CapDrop []string `json:"capDrop,omitempty"`
}

// Bind is a bind mount of a host file or folder at a container path.
type Bind struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// InitCommand is the subcommand of the runtime's binary that runs Init.
const InitCommand = "container-init"
