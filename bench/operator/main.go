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

// Command operator benchmarks the manager (`make bench-operator`): on a local control
// plane (kube-apiserver and etcd, as envtest), it creates N RKLLMModels at once and
// measures the time until every model has its ConfigMap, Deployment and Service, the
// time until every model's status describes its spec, and the manager's peak resident
// memory. The manager is the real binary in its own process.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
	"github.com/rkllm-operator/rkllm-operator/hack/localcluster"
)

func main() {
	manager := flag.String("manager", "bin/manager", "The manager binary.")
	models := flag.Int("models", 500, "How many RKLLMModels to create.")
	workers := flag.Int("workers", 16, "How many clients create models in parallel.")
	reconcilers := flag.Int("max-concurrent-reconciles", 4, "The manager's --max-concurrent-reconciles.")
	timeout := flag.Duration("timeout", 10*time.Minute, "Give up after this long.")
	flag.Parse()
	logf.SetLogger(logr.Discard())

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *manager, *models, *workers, *reconcilers); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, managerBin string, n, workers, reconcilers int) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	cluster, err := localcluster.Start(localcluster.Options{RepoRoot: root})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	mgr, err := cluster.StartManager(context.WithoutCancel(ctx), managerBin,
		"--default-server-image=registry.test/rkllm-server:bench", fmt.Sprintf("--max-concurrent-reconciles=%d", reconcilers),
		"--zap-log-level=error")
	if err != nil {
		return err
	}
	defer func() { _ = mgr.Stop(context.Background(), 15*time.Second) }()
	c := cluster.Client

	// The manager is up when it has reconciled a first model.
	if err := createModels(ctx, c, "warmup", 1, 1); err != nil {
		return err
	}
	if err := waitFor(ctx, mgr, func(ctx context.Context) (bool, error) {
		done, err := reconciledModels(ctx, c)
		return done >= 1, err
	}); err != nil {
		return fmt.Errorf("waiting for the manager to start: %w (log: %s)", err, mgr.Log)
	}
	idle, err := mgr.PeakRSS()
	if err != nil {
		return err
	}

	start := time.Now()
	if err := createModels(ctx, c, "model", n, workers); err != nil {
		return err
	}
	created := time.Since(start)
	var children, reconciled time.Duration
	if err := waitFor(ctx, mgr, func(ctx context.Context) (bool, error) {
		if children == 0 {
			ok, err := allChildren(ctx, c, n+1)
			if err != nil || !ok {
				return false, err
			}
			children = time.Since(start)
		}
		done, err := reconciledModels(ctx, c)
		if err != nil || done < n+1 {
			return false, err
		}
		reconciled = time.Since(start)
		return true, nil
	}); err != nil {
		return fmt.Errorf("waiting for %d models: %w (log: %s)", n, err, mgr.Log)
	}
	peak, err := mgr.PeakRSS()
	if err != nil {
		return err
	}

	fmt.Printf("machine: %s, %d CPUs, %s %s/%s\n", cpuModel(), runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Printf("models: %d (created by %d parallel clients in %s)\n", n, workers, created.Round(time.Millisecond))
	fmt.Printf("manager: --max-concurrent-reconciles=%d\n", reconcilers)
	fmt.Printf("all ConfigMaps, Deployments and Services exist after: %s\n", children.Round(time.Millisecond))
	fmt.Printf("every status describes its spec after:            %s\n", reconciled.Round(time.Millisecond))
	fmt.Printf("manager peak RSS: %.1f MiB (%.1f MiB before the models)\n", mib(peak), mib(idle))
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// createModels creates n models named prefix-NNNN in namespace default.
func createModels(ctx context.Context, c client.Client, prefix string, n, workers int) error {
	names := make(chan string)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				m := &inferencev1alpha1.RKLLMModel{
					ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
					Spec: inferencev1alpha1.RKLLMModelSpec{Model: inferencev1alpha1.ModelSource{
						URL: "https://models.example.org/" + name + "/model.rkllm"}},
				}
				if err := c.Create(ctx, m); err != nil {
					errs <- fmt.Errorf("creating %s: %w", name, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case names <- fmt.Sprintf("%s-%04d", prefix, i):
		case err = <-errs:
			break feed
		}
	}
	close(names)
	wg.Wait()
	if err != nil {
		return err
	}
	select {
	case err = <-errs:
		return err
	default:
		return nil
	}
}

// allChildren reports whether n of each child kind exist (metadata-only lists).
func allChildren(ctx context.Context, c client.Client, n int) (bool, error) {
	for _, gvk := range []schema.GroupVersionKind{
		{Version: "v1", Kind: "ConfigMapList"},
		{Group: "apps", Version: "v1", Kind: "DeploymentList"},
		{Version: "v1", Kind: "ServiceList"},
	} {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(gvk)
		if err := c.List(ctx, list, client.InNamespace("default"), client.MatchingLabels{"app.kubernetes.io/managed-by": "rkllm-operator"}); err != nil {
			return false, err
		}
		if len(list.Items) < n {
			return false, nil
		}
	}
	return true, nil
}

// reconciledModels counts models whose status describes their spec.
func reconciledModels(ctx context.Context, c client.Client) (int, error) {
	list := &inferencev1alpha1.RKLLMModelList{}
	if err := c.List(ctx, list, client.InNamespace("default")); err != nil {
		return 0, err
	}
	done := 0
	for _, m := range list.Items {
		if m.Status.ObservedGeneration == m.Generation && m.Status.Phase != "" {
			done++
		}
	}
	return done, nil
}

// waitFor polls cond until it holds, failing early if the manager exits.
func waitFor(ctx context.Context, mgr *localcluster.Process, cond wait.ConditionWithContextFunc) error {
	return wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-mgr.Exited():
			return false, fmt.Errorf("the manager exited: %v", err)
		default:
		}
		return cond(ctx)
	})
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
