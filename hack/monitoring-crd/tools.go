//go:build tools

// Package tools pins the Prometheus Operator's API types that `make servicemonitor-crd`
// generates the ServiceMonitor CRD from, so go.sum covers them.
package tools

import _ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
