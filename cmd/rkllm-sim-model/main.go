// Command rkllm-sim-model writes model and LoRA files for the RKLLM simulator library
// (server/runtime/simulator). The files drive a simulator, not a language model.
//
//	rkllm-sim-model [flags] FILE        write a model file
//	rkllm-sim-model -lora NAME FILE     write a LoRA adapter file
//	rkllm-sim-model -samples DIR        write the sample set into DIR
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/rkllm-operator/rkllm-operator/server/runtime/simulator"
)

func main() {
	m := simulator.DefaultModel()
	lora := flag.String("lora", "", "write a LoRA adapter with this name instead of a model")
	samples := flag.String("samples", "", "write the sample models and adapters into this folder")
	flag.StringVar(&m.Name, "name", m.Name, "model name")
	flag.Float64Var(&m.DecodeTokensPerSecond, "decode-tps", m.DecodeTokensPerSecond, "decode tokens per second (0 = as fast as possible)")
	flag.Float64Var(&m.PrefillTokensPerSecond, "prefill-tps", m.PrefillTokensPerSecond, "prefill tokens per second (0 = as fast as possible)")
	flag.IntVar(&m.MaxContextLimit, "max-context-limit", m.MaxContextLimit, "the model's context limit (max_context_len may not exceed it)")
	flag.IntVar(&m.HiddenSize, "hidden-size", m.HiddenSize, "embedding width (hidden states, embedding inputs)")
	flag.Uint64Var(&m.Seed, "seed", m.Seed, "seed of the simulated output")
	flag.IntVar(&m.ReplyMinTokens, "reply-min-tokens", m.ReplyMinTokens, "shortest reply before the end-of-sequence token")
	flag.IntVar(&m.ReplyMaxTokens, "reply-max-tokens", m.ReplyMaxTokens, "longest reply before the end-of-sequence token")
	flag.Usage = func() {
		_, _ = fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] FILE | -lora NAME FILE | -samples DIR\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(m, *lora, *samples, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "rkllm-sim-model:", err)
		os.Exit(1)
	}
}

func run(m simulator.Model, lora, samples string, args []string) error {
	if samples != "" {
		return writeSamples(samples)
	}
	if len(args) != 1 {
		return fmt.Errorf("want one FILE argument (see -h)")
	}
	if lora != "" {
		return simulator.WriteLora(args[0], lora)
	}
	return simulator.WriteModel(args[0], m)
}

func writeSamples(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // samples are read by other users (a server in a container)
		return err
	}
	files := []struct {
		name  string
		write func(string) error
	}{
		{"sim-rk3588.rkllm", func(p string) error { return simulator.WriteModel(p, simulator.DefaultModel()) }},
		{"sim-fast.rkllm", func(p string) error { return simulator.WriteModel(p, simulator.FastModel()) }},
		{"sim-lora-chat.rkllm-lora", func(p string) error { return simulator.WriteLora(p, "chat") }},
		{"sim-lora-code.rkllm-lora", func(p string) error { return simulator.WriteLora(p, "code") }},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := f.write(p); err != nil {
			return err
		}
		fmt.Println(p)
	}
	return nil
}
