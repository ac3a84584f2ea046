//go:build cgo

package worker

import "github.com/rkllm-operator/rkllm-operator/server/runtime"

// Library adapts the cgo binding's library to Runtime; its handles are Models as they
// are.
type Library struct{ *runtime.Library }

// Init implements Runtime.
func (l Library) Init(p runtime.Param) (Model, error) {
	h, err := l.Library.Init(p)
	if err != nil {
		return nil, err
	}
	return h, nil
}

var (
	_ Runtime = Library{}
	_ Model   = (*runtime.Handle)(nil)
)
