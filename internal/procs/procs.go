// Package procs sets how many Ps (GOMAXPROCS) an Aviary process runs Go
// code on.
//
// The Go runtime looks for network events mainly when a P has nothing else
// to run; while every P is busy it polls only from its monitor thread,
// about every 10ms. A node on few cores that is kept busy by fsyncs, the
// fan-out and gRPC leaves requests waiting in its sockets meanwhile. One P
// more than the CPUs gives a P that is idle most of the time and waits in
// the network poller, so a request is picked up when it arrives. On 2 CPUs
// it doubled timeline reads under fan-out and cut their p99 by half, and
// raised durable unary puts by a quarter; reads that keep every CPU busy
// (64 clients of Get in the same process) lost a quarter of their
// throughput (docs/benchmarks.md, "GOMAXPROCS").
package procs

import (
	"fmt"
	"os"
	"runtime"
)

// Flag is the usage of a --gomaxprocs flag whose value goes to Set.
const Flag = `Ps that run Go code at once (GOMAXPROCS): 0 = the CPUs available plus one, a spare that keeps picking up network events while the others are busy (unless the GOMAXPROCS environment variable is set, which then decides); -1 = the Go runtime's default (the CPUs available)`

// Set applies a --gomaxprocs value n (see Flag) and returns the number of
// Ps in effect.
func Set(n int) (int, error) {
	switch {
	case n < -1:
		return 0, fmt.Errorf("--gomaxprocs %d: want -1, 0 or a positive number", n)
	case n > 0:
		runtime.GOMAXPROCS(n)
	case n == 0 && os.Getenv("GOMAXPROCS") == "":
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
	return runtime.GOMAXPROCS(0), nil
}
