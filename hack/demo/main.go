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

// Command demo is `make demo`: a local control plane (kube-apiserver and etcd), the
// operator's manager, the samples in config/samples, and a plain description of what
// the operator made of them. It runs until Ctrl-C and then removes everything it started.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/hack/localcluster"
)

func main() {
	manager := flag.String("manager", "bin/manager", "The manager binary to run.")
	samples := flag.String("samples", "config/samples", "Folder of RKLLMModel YAML files to apply.")
	image := flag.String("server-image", "ghcr.io/rkllm-operator/rkllm-server:latest", "The manager's --default-server-image.")
	flag.Parse()
	// envtest and the client log through controller-runtime; the demo speaks for itself.
	logf.SetLogger(logr.Discard())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := &printer{w: os.Stdout}
	err := run(ctx, out, *manager, *samples, *image)
	if err == nil {
		err = out.err
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out *printer, managerBin, samplesDir, image string) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	out.ln("rkllm-operator demo: a local control plane, the operator and the sample models")
	step(out, "starting kube-apiserver and etcd from %s", os.Getenv("KUBEBUILDER_ASSETS"))
	cluster, err := localcluster.Start(localcluster.Options{RepoRoot: root})
	if err != nil {
		return err
	}
	defer func() {
		step(out, "stopping the control plane and removing %s", cluster.WorkDir)
		cluster.Stop()
	}()
	step(out, "API server at %s, RKLLMModel CRD installed", cluster.Server())

	step(out, "starting the manager (%s); its log: %s", managerBin, filepath.Join(cluster.WorkDir, "manager.log"))
	mgr, err := cluster.StartManager(context.WithoutCancel(ctx), managerBin, "--default-server-image="+image)
	if err != nil {
		return err
	}
	defer func() {
		step(out, "stopping the manager")
		if err := mgr.Stop(context.Background(), 15*time.Second); err != nil {
			out.f("    %v\n", err)
		}
	}()

	models, err := applySamples(ctx, out, cluster.Client, samplesDir)
	if err != nil {
		return err
	}
	step(out, "waiting for the operator to reconcile them")
	start := time.Now()
	for _, m := range models {
		if err := waitReconciled(ctx, cluster.Client, m, mgr); err != nil {
			return err
		}
	}
	step(out, "reconciled in %s", time.Since(start).Round(10*time.Millisecond))

	for _, m := range models {
		if err := describe(ctx, out, cluster.Client, m); err != nil {
			return err
		}
	}
	explain(out, cluster, models)
	return watch(ctx, out, cluster.Client, models, mgr)
}

func step(out *printer, format string, args ...any) {
	out.f("==> "+format+"\n", args...)
}

// printer writes the demo's output and keeps the first write error, so the code that
// prints need not check every line.
type printer struct {
	w   io.Writer
	err error
	// parent receives the error of a table's printer.
	parent *printer
}

// table is a printer that aligns tab-separated columns until flush.
func (p *printer) table(padding int) *printer {
	return &printer{w: tabwriter.NewWriter(p.w, 0, 0, padding, ' ', 0), parent: p}
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format, args...)
	}
}

func (p *printer) ln(s string) { p.f("%s\n", s) }

func (p *printer) flush() {
	if tw, ok := p.w.(*tabwriter.Writer); ok && p.err == nil {
		p.err = tw.Flush()
	}
	if p.parent != nil && p.parent.err == nil {
		p.parent.err = p.err
	}
}

// applySamples applies every RKLLMModel in the folder's YAML files (server-side apply,
// namespace default unless the file says otherwise) and returns their keys.
func applySamples(ctx context.Context, out *printer, c client.Client, dir string) ([]client.ObjectKey, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	var keys []client.ObjectKey
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			if u.GetNamespace() == "" {
				u.SetNamespace("default")
			}
			if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("rkllm-demo"), client.ForceOwnership); err != nil {
				return nil, fmt.Errorf("applying %s %s from %s: %w", u.GetKind(), u.GetName(), f, err)
			}
			step(out, "applied %s %s/%s from %s", u.GetKind(), u.GetNamespace(), u.GetName(), f)
			if u.GetKind() == "RKLLMModel" {
				keys = append(keys, client.ObjectKey{Namespace: u.GetNamespace(), Name: u.GetName()})
			}
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no RKLLMModel in %s", dir)
	}
	return keys, nil
}

// waitReconciled waits until the model's status describes its spec.
func waitReconciled(ctx context.Context, c client.Client, key client.ObjectKey, mgr *localcluster.Process) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-mgr.Exited():
			return false, fmt.Errorf("the manager exited (%v); see %s", err, mgr.Log)
		default:
		}
		m := &inferencev1alpha1.RKLLMModel{}
		if err := c.Get(ctx, key, m); err != nil {
			return false, nil
		}
		return m.Status.ObservedGeneration == m.Generation && m.Status.Phase != "", nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s to be reconciled: %w (manager log: %s)", key, err, mgr.Log)
	}
	return nil
}

// describe prints a model like `kubectl get rkm` and `kubectl describe` would, and the
// objects the operator made for it.
func describe(ctx context.Context, out *printer, c client.Client, key client.ObjectKey) error {
	m := &inferencev1alpha1.RKLLMModel{}
	if err := c.Get(ctx, key, m); err != nil {
		return err
	}
	out.f("\nRKLLMModel %s\n", key)
	tw := out.table(3)
	tw.ln("  NAME\tREADY\tPHASE\tREPLICAS\tMODEL\tAGE")
	ready := "Unknown"
	if cond := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady); cond != nil {
		ready = string(cond.Status)
	}
	tw.f("  %s\t%s\t%s\t%d\t%s\t%s\n", m.Name, ready, m.Status.Phase, m.Spec.GetReplicas(), m.Status.Model,
		duration.HumanDuration(time.Since(m.CreationTimestamp.Time)))
	tw.flush()

	out.ln("\n  Conditions")
	tw = out.table(2)
	for _, cond := range m.Status.Conditions {
		tw.f("    %s\t%s\t%s\t%s\n", cond.Type, cond.Status, cond.Reason, cond.Message)
	}
	tw.flush()
	out.f("  Endpoint      %s\n", m.Status.Endpoint)
	if f := m.Status.LastFailure; f != nil {
		out.f("  Last failure  %s in %s/%s: %s\n", f.Reason, f.Pod, f.Container, f.Message)
	}

	out.ln("\n  Objects the operator created (owned by the model, deleted with it)")
	cm := &corev1.ConfigMap{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: key.Namespace, Name: key.Name + "-config"}, cm); err != nil {
		return err
	}
	out.f("    ConfigMap/%s, server.json:\n", cm.Name)
	for _, line := range strings.Split(strings.TrimSpace(cm.Data["server.json"]), "\n") {
		out.f("        %s\n", line)
	}

	d := &appsv1.Deployment{}
	if err := c.Get(ctx, key, d); err != nil {
		return err
	}
	out.f("    Deployment/%s: %d replica(s), strategy %s\n", d.Name, *d.Spec.Replicas, d.Spec.Strategy.Type)
	pod := d.Spec.Template.Spec
	for _, ic := range pod.InitContainers {
		out.f("        init container %s: %s %s\n", ic.Name, strings.Join(ic.Command, " "), strings.Join(ic.Args, " "))
	}
	for _, ct := range pod.Containers {
		out.f("        container %s (%s): %s %s\n", ct.Name, ct.Image, strings.Join(ct.Command, " "), strings.Join(ct.Args, " "))
		out.f("            requests %s; limits %s\n", resources(ct.Resources.Requests), resources(ct.Resources.Limits))
		if p := ct.StartupProbe; p != nil {
			out.f("            probes: startup %s (up to %ds), readiness %s, liveness %s; preStop pause, grace %ds\n",
				p.HTTPGet.Path, p.PeriodSeconds*p.FailureThreshold, ct.ReadinessProbe.HTTPGet.Path, ct.LivenessProbe.HTTPGet.Path,
				*pod.TerminationGracePeriodSeconds)
		}
	}

	svc := &corev1.Service{}
	if err := c.Get(ctx, key, svc); err != nil {
		return err
	}
	for _, p := range svc.Spec.Ports {
		out.f("    Service/%s: %s %s, port %d -> %s\n", svc.Name, svc.Spec.Type, svc.Spec.ClusterIP, p.Port, p.TargetPort.String())
	}
	return nil
}

func resources(l corev1.ResourceList) string {
	var parts []string
	for k, v := range l {
		parts = append(parts, fmt.Sprintf("%s %s", k, v.String()))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// explain says plainly what this control plane does not do, and how to look around.
func explain(out *printer, cluster *localcluster.Cluster, models []client.ObjectKey) {
	out.f("%s", `
Note: this control plane runs only kube-apiserver and etcd. There is no
kube-controller-manager, scheduler or kubelet, so the Deployment never gets pods
and the model stays Pending. On a cluster with NPU nodes and the device plugin, the
pod downloads the model, loads it on the NPU and the model turns Ready.
`)
	kubectl := "kubectl"
	if k := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl"); fileExists(k) {
		kubectl = k
	}
	first := models[0]
	out.f(`
Look around with kubectl while the demo runs:
  export KUBECONFIG=%s
  %s get rkm -A
  %s describe rkm -n %s %s
  %s patch rkm -n %s %s --type merge -p '{"spec":{"suspend":true}}'

Watching the models for changes; press Ctrl-C to stop and clean up.
`, cluster.Kubeconfig, kubectl, kubectl, first.Namespace, first.Name, kubectl, first.Namespace, first.Name)
}

func fileExists(p string) bool {
	_, err := os.Stat(p) //nolint:gosec // a folder the developer names
	return err == nil
}

// watch prints each change of a model's status until ctx ends.
func watch(ctx context.Context, out *printer, c client.Client, models []client.ObjectKey, mgr *localcluster.Process) error {
	last := map[client.ObjectKey]string{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, key := range models {
			m := &inferencev1alpha1.RKLLMModel{}
			if err := c.Get(ctx, key, m); err != nil {
				if ctx.Err() != nil {
					break
				}
				out.f("  %s  %s: %v\n", time.Now().Format("15:04:05"), key, err)
				continue
			}
			summary := summaryLine(m)
			if prev, ok := last[key]; ok && prev != summary {
				out.f("  %s  %s: %s\n", time.Now().Format("15:04:05"), key.Name, summary)
			}
			last[key] = summary
		}
		select {
		case <-ctx.Done():
			out.ln("")
			return nil
		case err := <-mgr.Exited():
			return fmt.Errorf("the manager exited (%v); see %s", err, mgr.Log)
		case <-tick.C:
		}
	}
}

func summaryLine(m *inferencev1alpha1.RKLLMModel) string {
	s := fmt.Sprintf("phase %s, generation %d", m.Status.Phase, m.Status.ObservedGeneration)
	if cond := meta.FindStatusCondition(m.Status.Conditions, inferencev1alpha1.ConditionReady); cond != nil {
		s += fmt.Sprintf(", Ready=%s %s: %s", cond.Status, cond.Reason, cond.Message)
	}
	return s
}
