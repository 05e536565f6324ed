package procs

import (
	"runtime"
	"testing"
)

func TestSet(t *testing.T) {
	was := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(was) })

	t.Setenv("GOMAXPROCS", "")
	runtime.GOMAXPROCS(2)
	if got, err := Set(0); err != nil || got != 3 {
		t.Fatalf("Set(0) with 2 Ps: %d, %v; want 3", got, err)
	}
	if got, err := Set(5); err != nil || got != 5 {
		t.Fatalf("Set(5): %d, %v", got, err)
	}
	runtime.GOMAXPROCS(2)
	if got, err := Set(-1); err != nil || got != 2 {
		t.Fatalf("Set(-1) with 2 Ps: %d, %v; want 2 (unchanged)", got, err)
	}
	// The environment variable decides over the default.
	t.Setenv("GOMAXPROCS", "2")
	if got, err := Set(0); err != nil || got != 2 {
		t.Fatalf("Set(0) with GOMAXPROCS=2 set: %d, %v; want 2", got, err)
	}
	if _, err := Set(-2); err == nil {
		t.Fatal("Set(-2): no error")
	}
}
