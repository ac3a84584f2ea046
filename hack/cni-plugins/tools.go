//go:build tools

// Package tools pins the CNI plugins the Makefile builds (make cni-plugins), so go.sum
// covers them.
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
)
