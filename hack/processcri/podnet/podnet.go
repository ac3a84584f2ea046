// Package podnet gives pod sandboxes their network with the CNI reference plugins
// (github.com/containernetworking/plugins, run through libcni): loopback brings up lo in
// the pod's network namespace, bridge adds a veth pair to the node's bridge, host-local
// hands out the address from the node's pod subnet.
//
// The "node" is the network namespace the process runtime runs in (a private one on the
// simulated node: nothing here touches the host's network). New creates the node's
// bridge with the subnet's first address, the node IP, before any pod exists, so the
// kubelet can serve and report that address from the start; the bridge plugin finds it
// and adds pods to it.
package podnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

// Config says where the plugins are and what network to build.
type Config struct {
	// PluginDir holds the bridge, host-local and loopback binaries.
	PluginDir string
	// StateDir holds host-local's leases and libcni's cache.
	StateDir string
	// Subnet is the pods' subnet; its first address is the node's, on the bridge.
	Subnet netip.Prefix
	// Bridge is the bridge's name (at most 15 bytes).
	Bridge string
	// OwnPIDNamespace says the runtime runs in a PID namespace of its own whose proc
	// filesystem is not mounted at /proc (the kubelet, in the same mount namespace, needs
	// the host's there). The plugins find their own namespaces through /proc/self, so
	// they are run through wrappers that mount this PID namespace's proc over /proc in a
	// mount namespace of their own.
	OwnPIDNamespace bool
}

// Pod names a sandbox for the plugins (CNI_ARGS, as the kubelet's runtimes pass them).
type Pod struct {
	Namespace, Name, UID string
}

// Network adds pods to the node's bridge.
type Network struct {
	cfg      Config
	cni      *libcni.CNIConfig
	bridge   *libcni.NetworkConfigList
	loopback *libcni.NetworkConfigList
	nodeIP   netip.Addr
}

// New checks the plugins and creates the node's bridge with the node IP (idempotent).
func New(cfg Config) (*Network, error) {
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 30 {
		return nil, fmt.Errorf("pod subnet %s: want an IPv4 subnet of at least 4 addresses", cfg.Subnet)
	}
	if len(cfg.Bridge) == 0 || len(cfg.Bridge) > 15 {
		return nil, fmt.Errorf("bridge name %q: want 1 to 15 bytes", cfg.Bridge)
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cfg.PluginDir, p)); err != nil {
			return nil, fmt.Errorf("CNI plugin %s: %w (make cni-plugins builds them)", p, err)
		}
	}
	n := &Network{cfg: cfg, nodeIP: cfg.Subnet.Masked().Addr().Next()}
	pluginDir := cfg.PluginDir
	var err error
	if cfg.OwnPIDNamespace {
		if pluginDir, err = writeWrappers(cfg.PluginDir, filepath.Join(cfg.StateDir, "bin")); err != nil {
			return nil, err
		}
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, filepath.Join(cfg.StateDir, "cache"), nil)
	if n.bridge, err = n.bridgeConf(); err != nil {
		return nil, err
	}
	if n.loopback, err = libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"lo","plugins":[{"type":"loopback"}]}`)); err != nil {
		return nil, fmt.Errorf("loopback network: %w", err)
	}
	if err := n.setUpNode(); err != nil {
		return nil, err
	}
	return n, nil
}

// writeWrappers writes, for each plugin, a script that runs it with this PID
// namespace's proc at /proc (unshare --mount-proc, in a private mount namespace), and
// returns their folder. The bridge plugin finds host-local through the same folder.
func writeWrappers(pluginDir, dir string) (string, error) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return "", fmt.Errorf("unshare not found (Debian package util-linux): %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		script := fmt.Sprintf("#!/bin/sh\nexec %s --mount-proc --propagation private %s\n", unshare, filepath.Join(pluginDir, p))
		if err := os.WriteFile(filepath.Join(dir, p), []byte(script), 0o700); err != nil { //nolint:gosec // an executable script
			return "", err
		}
	}
	return dir, nil
}

// bridgeConf is the pods' network: the bridge plugin with host-local addresses and a
// default route through the node.
func (n *Network) bridgeConf() (*libcni.NetworkConfigList, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "pods",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      n.cfg.Bridge,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": n.cfg.Subnet.Masked().String(), "gateway": n.nodeIP.String()}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": filepath.Join(n.cfg.StateDir, "ipam"),
			},
		}},
	}
	data, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("bridge network: %w", err)
	}
	return list, nil
}

// setUpNode brings up lo and creates the bridge with the node IP in the current network
// namespace.
func (n *Network) setUpNode() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	br, err := netlink.LinkByName(n.cfg.Bridge)
	if err != nil {
		if !errors.As(err, new(netlink.LinkNotFoundError)) {
			return fmt.Errorf("finding bridge %s: %w", n.cfg.Bridge, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.cfg.Bridge}}); err != nil {
			return fmt.Errorf("creating bridge %s: %w", n.cfg.Bridge, err)
		}
		if br, err = netlink.LinkByName(n.cfg.Bridge); err != nil {
			return fmt.Errorf("finding bridge %s: %w", n.cfg.Bridge, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.nodeIP.AsSlice(), Mask: net.CIDRMask(n.cfg.Subnet.Bits(), 32)}}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return fmt.Errorf("adding %s to bridge %s: %w", addr, n.cfg.Bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing up bridge %s: %w", n.cfg.Bridge, err)
	}
	return nil
}

// NodeIP is the node's address on the bridge: pods reach the node there, and the
// kubelet serves and reports it.
func (n *Network) NodeIP() netip.Addr { return n.nodeIP }

func (p Pod) runtimeConf(id, netns, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: id, NetNS: netns, IfName: ifName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", p.UID},
		},
	}
}

// Add attaches the sandbox id, whose network namespace is netns (a path), and returns
// its address.
func (n *Network) Add(ctx context.Context, id, netns string, pod Pod) (netip.Addr, error) {
	if _, err := n.cni.AddNetworkList(ctx, n.loopback, pod.runtimeConf(id, netns, "lo")); err != nil {
		return netip.Addr{}, fmt.Errorf("CNI loopback plugin: %w", err)
	}
	res, err := n.cni.AddNetworkList(ctx, n.bridge, pod.runtimeConf(id, netns, "eth0"))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI bridge plugin: %w", err)
	}
	ip, err := podIP(res)
	if err != nil {
		// Give the address back: the sandbox is not made.
		return netip.Addr{}, errors.Join(err, n.Del(ctx, id, netns, pod))
	}
	return ip, nil
}

// Del detaches the sandbox and frees its address. It succeeds for a sandbox already
// detached, and with an empty netns (the namespace is gone) it only frees the address.
func (n *Network) Del(ctx context.Context, id, netns string, pod Pod) error {
	errBridge := n.cni.DelNetworkList(ctx, n.bridge, pod.runtimeConf(id, netns, "eth0"))
	if errBridge != nil {
		errBridge = fmt.Errorf("CNI bridge plugin DEL: %w", errBridge)
	}
	errLo := n.cni.DelNetworkList(ctx, n.loopback, pod.runtimeConf(id, netns, "lo"))
	if errLo != nil {
		errLo = fmt.Errorf("CNI loopback plugin DEL: %w", errLo)
	}
	return errors.Join(errBridge, errLo)
}

func podIP(res types.Result) (netip.Addr, error) {
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("CNI result: %w", err)
	}
	for _, ipc := range r.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP.To4()); ok {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("the CNI bridge plugin gave no IPv4 address: %v", r)
}
