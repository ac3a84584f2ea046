//go:build tools

// Package tools pins the helm command the Makefile builds (make helm), so go.sum covers it.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
