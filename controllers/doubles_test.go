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
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

// faultInjector makes the controller's applies fail in chosen namespaces, the way a
// control-plane hiccup does, and records the status it writes there.
type faultInjector struct {
	mu sync.Mutex
	// apply is the error applies in a namespace return.
	apply map[string]error
	// attempts counts applies refused per namespace.
	attempts map[string]int
	// statuses are the status patches written per namespace, in order.
	statuses map[string][]client.Object
}

// wrap puts the injector between the controller and its client.
func (f *faultInjector) wrap(c client.Client) client.Client {
	return interceptor.NewClient(noWatch{c}, interceptor.Funcs{
		Apply: func(ctx context.Context, c client.WithWatch, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
			if err := f.applyFault(obj); err != nil {
				return err
			}
			return c.Apply(ctx, obj, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
			err := c.SubResource(sub).Patch(ctx, obj, patch, opts...)
			if err == nil && sub == "status" {
				f.record(obj)
			}
			return err
		},
	})
}

// fail makes applies in ns return err (nil: succeed again).
func (f *faultInjector) fail(ns string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.apply == nil {
		f.apply = map[string]error{}
	}
	if err == nil {
		delete(f.apply, ns)
		return
	}
	f.apply[ns] = err
}

func (f *faultInjector) applyFault(obj runtime.ApplyConfiguration) error {
	ns, err := namespaceOf(obj)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fault := f.apply[ns]
	if fault != nil {
		if f.attempts == nil {
			f.attempts = map[string]int{}
		}
		f.attempts[ns]++
	}
	return fault
}

func (f *faultInjector) refused(ns string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[ns]
}

func (f *faultInjector) record(obj client.Object) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statuses == nil {
		f.statuses = map[string][]client.Object{}
	}
	cp, ok := obj.DeepCopyObject().(client.Object)
	if ok {
		f.statuses[obj.GetNamespace()] = append(f.statuses[obj.GetNamespace()], cp)
	}
}

// written returns the status patches written in ns so far.
func (f *faultInjector) written(ns string) []client.Object {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]client.Object(nil), f.statuses[ns]...)
}

// namespaceOf reads the namespace of an apply configuration.
func namespaceOf(obj runtime.ApplyConfiguration) (string, error) {
	var meta struct {
		Metadata struct {
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := convert(obj, &meta); err != nil {
		return "", fmt.Errorf("reading the namespace of %T: %w", obj, err)
	}
	return meta.Metadata.Namespace, nil
}

// noWatch lets the manager's client, which cannot watch, go through the interceptor.
type noWatch struct{ client.Client }

func (noWatch) Watch(context.Context, client.ObjectList, ...client.ListOption) (watch.Interface, error) {
	return nil, errors.New("the controller does not watch through its client")
}

// countingRecorder keeps every event the controller emits: the event API folds repeats
// into series, which would hide spurious ones.
type countingRecorder struct {
	events.EventRecorder
	mu   sync.Mutex
	seen []emitted
}

// emitted is one event as the controller asked for it.
type emitted struct {
	namespace, model, eventType, reason, note string
}

func (r *countingRecorder) Eventf(regarding, related runtime.Object, eventType, reason, action, note string, args ...any) {
	if o, ok := regarding.(client.Object); ok {
		r.mu.Lock()
		r.seen = append(r.seen, emitted{o.GetNamespace(), o.GetName(), eventType, reason, fmt.Sprintf(note, args...)})
		r.mu.Unlock()
	}
	r.EventRecorder.Eventf(regarding, related, eventType, reason, action, note, args...)
}

// of returns the events emitted for a model.
func (r *countingRecorder) of(ns, model string) []emitted {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []emitted
	for _, e := range r.seen {
		if e.namespace == ns && e.model == model {
			out = append(out, e)
		}
	}
	return out
}

// offsetClock is the real clock moved forward by what tests add.
type offsetClock struct{ offset atomic.Int64 }

var _ clock.PassiveClock = (*offsetClock)(nil)

func (c *offsetClock) Now() time.Time                  { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *offsetClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c *offsetClock) advance(d time.Duration)         { c.offset.Add(int64(d)) }
