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

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Timeouts of the envtest suite, named so a failure says which wait ran out.
const (
	// reconcileTimeout bounds a wait for the controller to react to a change.
	reconcileTimeout = 60 * time.Second
	// pollInterval is how often a wait looks again.
	pollInterval = 100 * time.Millisecond
	// checkTimeout bounds one look.
	checkTimeout = 10 * time.Second
	// testImage is the manager's --default-server-image in the suite.
	testImage = "registry.test/rkllm-server:test"
	// testErrorGracePeriod is how long the suite's controller lets errors go on before
	// they change Ready; tests move testClock past it.
	testErrorGracePeriod = time.Hour
)

// k8sClient talks to the test API server directly (no cache), as a user would.
var k8sClient client.Client

// The suite's controller runs with these test doubles: faults makes its writes fail on
// demand, recorder counts every event it emits, and testClock is its clock, which tests
// move forward.
var (
	faults    = &faultInjector{}
	recorder  *countingRecorder
	testClock = &offsetClock{}
)

// TestMain starts kube-apiserver and etcd (built by hack/k8s-binaries.sh, found through
// KUBEBUILDER_ASSETS), installs the generated CRD and runs the controller in a manager
// like cmd/manager does. The tests of the pure pieces run without it when -short is set.
func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	flag.Parse()
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevel())))
	if testing.Short() {
		return m.Run()
	}
	if binaryAssets() == "" {
		fmt.Fprintln(os.Stderr, "envtest: no kube-apiserver and etcd: run `make envtest` (or set KUBEBUILDER_ASSETS), or `go test -short` for the unit tests only")
		return 1
	}

	env := &envtest.Environment{
		CRDDirectoryPaths:        []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		BinaryAssetsDirectory:    binaryAssets(),
		ControlPlaneStartTimeout: 90 * time.Second,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: starting the control plane: %v\n", err)
		// Start leaves etcd and kube-apiserver running when a later step (such as
		// installing a CRD the API server refuses) fails.
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: stopping the control plane: %v\n", err)
		}
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "envtest: stopping the control plane: %v\n", err)
		}
	}()

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := inferencev1alpha1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: client: %v\n", err)
		return 1
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  CacheOptions(nil),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "envtest: manager: %v\n", err)
		return 1
	}
	recorder = &countingRecorder{EventRecorder: mgr.GetEventRecorder("rkllm-operator")}
	r := &RKLLMModelReconciler{
		Client:                  faults.wrap(mgr.GetClient()),
		APIReader:               mgr.GetAPIReader(),
		Scheme:                  mgr.GetScheme(),
		Recorder:                recorder,
		Options:                 Options{DefaultImage: testImage},
		RetryInterval:           time.Second,
		ErrorGracePeriod:        testErrorGracePeriod,
		Clock:                   testClock,
		MaxConcurrentReconciles: 4,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		fmt.Fprintf(os.Stderr, "envtest: controller: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintf(os.Stderr, "envtest: manager stopped: %v\n", err)
		}
	}()
	if !mgr.GetCache().WaitForCacheSync(ctx) {
		fmt.Fprintln(os.Stderr, "envtest: the manager's cache did not sync")
		return 1
	}
	return m.Run()
}

// binaryAssets is KUBEBUILDER_ASSETS, or the folder hack/k8s-binaries.sh fills.
func binaryAssets() string {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	dir := filepath.Join("..", "bin", "k8s", "1.37.2")
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err == nil {
		abs, err := filepath.Abs(dir)
		if err == nil {
			return abs
		}
	}
	return ""
}

// zapLevel keeps the controller's info logs out of the test output unless
// TEST_VERBOSE_LOGS is set; errors always show.
func zapLevel() zapcore.Level {
	if os.Getenv("TEST_VERBOSE_LOGS") != "" {
		return zapcore.DebugLevel
	}
	return zapcore.ErrorLevel
}

// needEnv skips a test that needs the control plane when it is not running.
func needEnv(t *testing.T) {
	t.Helper()
	if k8sClient == nil {
		t.Skip("envtest control plane not running (-short)")
	}
}

// newNamespace creates a namespace of its own for a test and deletes it afterwards.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "rkm-test-"}}
	if err := k8sClient.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() { _ = k8sClient.Delete(context.Background(), ns) })
	return ns.Name
}

// eventually polls check until it returns nil or reconcileTimeout runs out, then fails
// the test with the last error check gave.
func eventually(t *testing.T, what string, check func(ctx context.Context) error) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), pollInterval, reconcileTimeout, true, func(context.Context) (bool, error) {
		// Each check has its own deadline, so the last one is not cut short by the
		// wait's and says what was wrong.
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		last = check(ctx)
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("waiting %s for %s: %v", reconcileTimeout, what, last)
	}
}
