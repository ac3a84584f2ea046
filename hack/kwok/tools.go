//go:build tools

// Package tools pins the kwok commands the Makefile builds (make kwokctl, make kwok), so
// go.sum covers them.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
	_ "sigs.k8s.io/kwok/cmd/kwokctl"
)
