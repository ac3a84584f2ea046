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
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
	"sigs.k8s.io/structured-merge-diff/v6/typed"
)

// statusFields is the status subtree, which no apply of the operator sets.
var statusFields = fieldpath.NewSet(fieldpath.MakePathOrDie("status"))

// fieldDiff tells whether an apply changed the fields the operator sets.
type fieldDiff struct {
	tc     managedfields.TypeConverter
	scheme *runtime.Scheme
	gvk    schema.GroupVersionKind
	// desired is the set of fields the apply sets, worked out before the apply (which
	// fills the apply configuration with the API server's answer).
	desired *fieldpath.Set
}

// newFieldDiff works out the fields desired sets on an object of kind gvk.
func newFieldDiff(tc managedfields.TypeConverter, scheme *runtime.Scheme, gvk schema.GroupVersionKind, desired runtime.ApplyConfiguration) (*fieldDiff, error) {
	obj, err := scheme.New(gvk)
	if err != nil {
		return nil, err
	}
	// An apply configuration has the same JSON form as the object it configures.
	if err := convert(desired, obj); err != nil {
		return nil, fmt.Errorf("decoding the applied configuration: %w", err)
	}
	obj.GetObjectKind().SetGroupVersionKind(gvk)
	typed, err := tc.ObjectToTyped(obj)
	if err != nil {
		return nil, fmt.Errorf("reading the applied configuration: %w", err)
	}
	set, err := typed.ToFieldSet()
	if err != nil {
		return nil, fmt.Errorf("listing the applied fields: %w", err)
	}
	return &fieldDiff{tc: tc, scheme: scheme, gvk: gvk, desired: set}, nil
}

// changed reports whether before and after differ in the fields the apply set or the
// operator's field manager owned in before (status aside): the fields an apply can change. Both objects
// are compared as the API server stored them, so its normalisation (quantities,
// defaults) never looks like a change, and neither do others' fields (status, the
// Deployment controller's annotations) or a new resourceVersion.
func (d *fieldDiff) changed(before, after client.Object) (bool, error) {
	owned, err := ownedFields(before)
	if err != nil {
		return false, err
	}
	// An apply never writes status; an empty status in the typed configuration would
	// otherwise make every status report of the child's controller look like a change.
	leaves := owned.Union(d.desired).RecursiveDifference(statusFields).Leaves()
	b, err := d.typed(before)
	if err != nil {
		return false, fmt.Errorf("reading the object before the apply: %w", err)
	}
	a, err := d.typed(after)
	if err != nil {
		return false, fmt.Errorf("reading the applied object: %w", err)
	}
	cmp, err := b.ExtractItems(leaves).Compare(a.ExtractItems(leaves))
	if err != nil {
		return false, fmt.Errorf("comparing the applied fields: %w", err)
	}
	return !cmp.IsSame(), nil
}

// typed converts a copy of obj, with its kind set (typed clients drop it), to a typed
// value.
func (d *fieldDiff) typed(obj client.Object) (*typed.TypedValue, error) {
	c := obj.DeepCopyObject()
	c.GetObjectKind().SetGroupVersionKind(d.gvk)
	return d.tc.ObjectToTyped(c)
}

// ownedFields is the set of fields the operator's field manager applied to obj (empty
// for an object it never applied).
func ownedFields(obj client.Object) (*fieldpath.Set, error) {
	set := &fieldpath.Set{}
	for _, e := range obj.GetManagedFields() {
		if e.Manager != FieldManager || e.Subresource != "" || e.FieldsV1 == nil {
			continue
		}
		s := &fieldpath.Set{}
		if err := s.FromJSON(e.FieldsV1.GetRawReader()); err != nil {
			return nil, fmt.Errorf("reading the managed fields of %s: %w", FieldManager, err)
		}
		set = set.Union(s)
	}
	return set, nil
}
