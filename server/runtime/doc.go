// Package runtime is the Go side of Rockchip's RKLLM runtime library (librkllmrt.so),
// the closed library that runs LLMs on the RK3588/RK3576 NPU. It is the project's only
// cgo package (besides the simulator's C code).
//
// # Loading
//
// Open loads the library at run time with dlopen (default DefaultLibrary,
// "librkllmrt.so", found through the dynamic linker's search path), so binaries build
// without the vendor's file and run with whichever runtime a board has. A missing
// library or function is an error naming the path and the symbol, never a crash.
//
// # ABIs
//
// Struct layouts change with every minor runtime release. The binding speaks ABI 1.2
// (runtime 1.2.1-1.2.3) and ABI 1.3 (runtime 1.3.0), chosen by the caller (ParseABI
// accepts "1.2", "1.3" or a full runtime version). Its own C declarations of both
// (rkllm_abi.h) carry _Static_assert checks of every size and offset. Open refuses a
// library that evidently speaks the other ABI (*ABIMismatchError). Features one ABI
// lacks (per-run sampling and max_new_tokens, ignore_eos_token and video input exist in
// 1.3 only) return an *UnsupportedError that wraps ErrNotSupported.
//
// # Use
//
//	lib, err := runtime.Open("", runtime.ABI13)
//	p := lib.DefaultParams()
//	p.ModelPath = "/models/qwen.rkllm"
//	h, err := lib.Init(p)
//	defer h.Destroy()
//	err = h.Run(ctx, []runtime.Input{{Type: runtime.InputPrompt, Prompt: "Hi"}}, runtime.InferParams{},
//		func(d runtime.Delivery) runtime.CallbackAction { ...; return runtime.Continue })
//
// Run blocks; Abort and IsRunning work from other goroutines meanwhile (they share no
// lock with Run), and cancelling Run's context aborts the run. The result callback
// receives copies in Go memory; it may run on a thread Go did not create. The runtime
// reaches the run only through a cgo.Handle passed as userdata, never a Go pointer.
//
// # C memory
//
// Every string and buffer handed to the runtime is C memory owned by the binding and
// freed exactly once, when the runtime can no longer use it: per-run inputs and
// parameters when Run returns; the chat template, tools, cross-attention buffers and
// prompt-cache path when replaced or at Destroy; init parameters and LoRA adapters at
// Destroy. Library.LiveCAllocations counts what is held, for leak tests.
//
// The simulator library in server/runtime/simulator stands in for the vendor's library on
// machines without an NPU; see docs/runtime.md.
package runtime
