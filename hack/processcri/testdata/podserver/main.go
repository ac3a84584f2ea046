// Command podserver is the process runtime's test workload: an HTTP server on :8080
// (or $PORT) that answers with its hostname, and on SIGTERM writes "stopped by SIGTERM"
// to /dev/termination-log and exits with $EXIT_ON_TERM (default 0).
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host, _ := os.Hostname()
	srv := &http.Server{Addr: ":" + port, ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", host)
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Printf("podserver %s listening on :%s as uid %d\n", host, port, os.Getuid())
	if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "podserver:", err)
		os.Exit(1)
	}
	_ = os.WriteFile("/dev/termination-log", []byte("stopped by SIGTERM"), 0o644)
	fmt.Println("podserver stopped by SIGTERM")
	code, _ := strconv.Atoi(os.Getenv("EXIT_ON_TERM"))
	os.Exit(code)
}
