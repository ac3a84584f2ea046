package scaling

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Lease is a coordination.k8s.io Lease taken for the length of one scaling decision,
// so two gateway replicas never decide at once: one replica's activation cannot evict
// the model another replica has just activated, and both read the cluster only after
// the other's writes. Every replica serves requests and activates models; they take
// turns only to decide. A holder that dies is replaced once its lease expires.
type Lease struct {
	// Client reads and writes the Lease on the API server, not through a cache, so a
	// decision starts from the previous holder's write.
	Client client.Client
	// Key names the Lease object.
	Key client.ObjectKey
	// Identity names this holder (the gateway's pod).
	Identity string
	// Duration is how long the lease holds without release; a decision must end well
	// within it.
	Duration time.Duration
	// Retry is the pause between attempts while another replica holds the lease.
	Retry time.Duration
	Clock clock.Clock
}

// Acquire takes the lease, waiting while another holder has it, until ctx ends. The
// returned function releases it.
func (l *Lease) Acquire(ctx context.Context) (release func(), err error) {
	for {
		ok, err := l.try(ctx)
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for the decision lease %s: %w", l.Key, context.Cause(ctx))
		}
		if err != nil {
			return nil, err
		}
		if ok {
			return func() { l.release() }, nil
		}
		// Jitter keeps replicas that wait for the same holder from retrying in step.
		pause := l.Retry + time.Duration(rand.Int64N(int64(l.Retry)+1)) //nolint:gosec // jitter, not a secret
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the decision lease %s: %w", l.Key, context.Cause(ctx))
		case <-l.Clock.After(pause):
		}
	}
}

// try takes the lease if it is free, expired or already this holder's. A conflict
// (another holder wrote it since the read) is a loss, not an error.
func (l *Lease) try(ctx context.Context) (bool, error) {
	now := metav1.NewMicroTime(l.Clock.Now())
	lease := &coordinationv1.Lease{}
	err := l.Client.Get(ctx, l.Key, lease)
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: l.Key.Namespace, Name: l.Key.Name}}
		l.hold(lease, now)
		err = l.Client.Create(ctx, lease)
		if apierrors.IsAlreadyExists(err) {
			return false, nil
		}
		return err == nil, wrap(err, "creating the decision lease")
	}
	if err != nil {
		return false, fmt.Errorf("reading the decision lease %s: %w", l.Key, err)
	}
	if !l.free(lease, now.Time) {
		return false, nil
	}
	l.hold(lease, now)
	err = l.Client.Update(ctx, lease)
	if apierrors.IsConflict(err) {
		return false, nil
	}
	return err == nil, wrap(err, "taking the decision lease")
}

func (l *Lease) free(lease *coordinationv1.Lease, now time.Time) bool {
	s := lease.Spec
	holder := ptr.Deref(s.HolderIdentity, "")
	if holder == "" || holder == l.Identity || s.RenewTime == nil || s.LeaseDurationSeconds == nil {
		return true
	}
	return now.After(s.RenewTime.Add(time.Duration(*s.LeaseDurationSeconds) * time.Second))
}

func (l *Lease) hold(lease *coordinationv1.Lease, now metav1.MicroTime) {
	lease.Spec.HolderIdentity = ptr.To(l.Identity)
	seconds := min(max(int64(l.Duration/time.Second), 1), math.MaxInt32)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(seconds)) //nolint:gosec // bounded just above
	lease.Spec.AcquireTime = &now
	lease.Spec.RenewTime = &now
}

// release gives the lease back if this holder still has it, so the next decision need
// not wait for it to expire. A failure only delays the next holder until expiry.
func (l *Lease) release() {
	ctx, cancel := context.WithTimeout(context.Background(), l.Duration)
	defer cancel()
	lease := &coordinationv1.Lease{}
	if err := l.Client.Get(ctx, l.Key, lease); err != nil || ptr.Deref(lease.Spec.HolderIdentity, "") != l.Identity {
		return
	}
	lease.Spec.HolderIdentity = ptr.To("")
	_ = l.Client.Update(ctx, lease)
}

func wrap(err error, what string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
