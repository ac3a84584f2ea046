package catalog

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	inferencev1alpha1 "github.com/rkllm-operator/rkllm-operator/api/v1alpha1"
)

// Labels the operator puts on a model's Service, which the EndpointSlice controller
// copies onto the Service's EndpointSlices.
const (
	labelManagedBy = "app.kubernetes.io/managed-by"
	managedBy      = "rkllm-operator"
	// portName is the server container's port for clients.
	portName = "http"
)

// CacheOptions limits the gateway's cache to the RKLLMModels of namespaces (all when
// empty) and the EndpointSlices of their Services.
func CacheOptions(namespaces []string) cache.Options {
	opts := cache.Options{ByObject: map[client.Object]cache.ByObject{
		&discoveryv1.EndpointSlice{}: {Label: labels.SelectorFromSet(labels.Set{labelManagedBy: managedBy})},
	}}
	if len(namespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range namespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// Kube is a Catalog kept in line with the cluster through an informer cache.
type Kube struct {
	*Snapshot
	cache cache.Cache
	log   logr.Logger
	wake  chan struct{}
}

// NewKube watches RKLLMModels and EndpointSlices through c. Start keeps the snapshot
// current; it must run for the catalog to fill.
func NewKube(ctx context.Context, c cache.Cache, log logr.Logger) (*Kube, error) {
	k := &Kube{Snapshot: NewSnapshot(), cache: c, log: log, wake: make(chan struct{}, 1)}
	handler := toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { k.poke() },
		UpdateFunc: func(any, any) { k.poke() },
		DeleteFunc: func(any) { k.poke() },
	}
	for _, obj := range []client.Object{&inferencev1alpha1.RKLLMModel{}, &discoveryv1.EndpointSlice{}} {
		inf, err := c.GetInformer(ctx, obj)
		if err != nil {
			return nil, fmt.Errorf("watching %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("watching %T: %w", obj, err)
		}
	}
	return k, nil
}

// poke asks for a rebuild; events arriving meanwhile share it.
func (k *Kube) poke() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// Start rebuilds the snapshot after every change until ctx ends (a manager Runnable).
func (k *Kube) Start(ctx context.Context) error {
	if !k.cache.WaitForCacheSync(ctx) {
		return fmt.Errorf("the cache of RKLLMModels and EndpointSlices did not sync: %w", ctx.Err())
	}
	k.poke()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-k.wake:
			if err := k.rebuild(ctx); err != nil {
				k.log.Error(err, "reading the models from the cache")
			}
		}
	}
}

// rebuild reads every model and EndpointSlice from the cache into a new snapshot.
func (k *Kube) rebuild(ctx context.Context) error {
	var models inferencev1alpha1.RKLLMModelList
	if err := k.cache.List(ctx, &models); err != nil {
		return err
	}
	var eps discoveryv1.EndpointSliceList
	if err := k.cache.List(ctx, &eps); err != nil {
		return err
	}
	bySvc := map[types.NamespacedName][]Endpoint{}
	for i := range eps.Items {
		s := &eps.Items[i]
		svc := types.NamespacedName{Namespace: s.Namespace, Name: s.Labels[discoveryv1.LabelServiceName]}
		bySvc[svc] = append(bySvc[svc], readyEndpoints(s)...)
	}
	out := make([]Model, 0, len(models.Items))
	for i := range models.Items {
		out = append(out, FromObject(&models.Items[i], bySvc[client.ObjectKeyFromObject(&models.Items[i])]))
	}
	k.Set(out)
	return nil
}

// FromObject is the catalog's view of an RKLLMModel with the given ready endpoints.
func FromObject(obj *inferencev1alpha1.RKLLMModel, endpoints []Endpoint) Model {
	m := Model{
		Key:       client.ObjectKeyFromObject(obj),
		Name:      obj.GetServedModelName(),
		Replicas:  obj.Spec.GetReplicas(),
		Suspended: obj.Spec.Suspend,
		Scaling:   obj.Spec.Scaling,
		Units:     obj.Spec.GetNPUUnits(),
		Created:   obj.CreationTimestamp.Time,
		Endpoints: endpoints,
	}
	if m.Suspended {
		m.Replicas = 0
	}
	if obj.Spec.Server != nil {
		m.APIKey = obj.Spec.Server.APIKeySecretRef
	}
	if t := obj.Status.LastRequestTime; t != nil {
		m.LastRequestTime = t.Time
	}
	if t, err := time.Parse(time.RFC3339, obj.Annotations[inferencev1alpha1.AnnotationScaledUpAt]); err == nil {
		m.ScaledUpAt = t
	}
	sortEndpoints(m.Endpoints)
	return m
}

// readyEndpoints lists the ready, not terminating endpoints of a slice on its http port.
func readyEndpoints(s *discoveryv1.EndpointSlice) []Endpoint {
	var port int32
	for _, p := range s.Ports {
		if p.Name != nil && *p.Name == portName && p.Port != nil {
			port = *p.Port
		}
	}
	if port == 0 {
		return nil
	}
	var out []Endpoint
	for _, e := range s.Endpoints {
		c := e.Conditions
		// The API says a nil ready condition is to be read as ready.
		if (c.Ready != nil && !*c.Ready) || (c.Terminating != nil && *c.Terminating) || len(e.Addresses) == 0 {
			continue
		}
		addr := net.JoinHostPort(e.Addresses[0], strconv.Itoa(int(port)))
		id := addr
		if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
			id = e.TargetRef.Name
		}
		out = append(out, Endpoint{ID: id, Address: addr})
	}
	return out
}

func sortEndpoints(es []Endpoint) {
	slices.SortFunc(es, func(a, b Endpoint) int { return strings.Compare(a.ID, b.ID) })
}
