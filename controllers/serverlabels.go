/*
Copyright 2026 The rkllm-operator Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package controllers

// ServerMetricsPort names the server container's port that serves /metrics apart from
// client traffic (the probe listener): what monitors scrape.
const ServerMetricsPort = probePortName

// ServerLabels are the labels every model server the operator runs carries, on its pods
// and on its Service, whatever the model: what selects all model servers from outside
// the operator (the chart's NetworkPolicy and ServiceMonitor).
func ServerLabels() map[string]string {
	return map[string]string{LabelName: serverAppName, LabelManagedBy: managedByValue}
}
