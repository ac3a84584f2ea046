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
	"k8s.io/apimachinery/pkg/util/managedfields"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/structured-merge-diff/v6/fieldpath"
)

// appliedFieldsDiffer reports whether before and after differ in the fields desired sets
// or the operator's field manager owned in before: the fields an apply of desired can
// change. Both objects are compared as the API server stored them, so its normalisation
// (quantities, defaults) never looks like a change.
func appliedFieldsDiffer(tc managedfields.TypeConverter, desired runtime.ApplyConfiguration, before, after client.Object) (bool, error) {
	fields, err := ownedFields(before)
	if err != nil {
		return false, err
	}
	// desired has the same JSON form as the object it configures.
	desiredObj, ok := after.DeepCopyObject().(client.Object)
	if !ok {
		return false, fmt.Errorf("copying %T", after)
	}
	if err := convert(desired, desiredObj); err != nil {
		return false, fmt.Errorf("decoding the applied configuration: %w", err)
	}
	desiredTyped, err := tc.ObjectToTyped(desiredObj)
	if err != nil {
		return false, fmt.Errorf("reading the applied configuration: %w", err)
	}
	set, err := desiredTyped.ToFieldSet()
	if err != nil {
		return false, fmt.Errorf("listing the applied fields: %w", err)
	}
	fields = fields.Union(set)

	b, err := tc.ObjectToTyped(before)
	if err != nil {
		return false, fmt.Errorf("reading the object before the apply: %w", err)
	}
	a, err := tc.ObjectToTyped(after)
	if err != nil {
		return false, fmt.Errorf("reading the applied object: %w", err)
	}
	leaves := fields.Leaves()
	cmp, err := b.ExtractItems(leaves).Compare(a.ExtractItems(leaves))
	if err != nil {
		return false, fmt.Errorf("comparing the applied fields: %w", err)
	}
	return !cmp.IsSame(), nil
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
