package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRedisEncodeEntry checks the 20-byte little-endian layout.
func TestRedisEncodeEntry(t *testing.T) {
	b := encodeEntry(0x0102030405060708, 0x1112131415161718, 0x21222324)
	if len(b) != 20 {
		t.Fatalf("len %d, want 20", len(b))
	}
	if got := binary.LittleEndian.Uint64(b[0:8]); got != 0x0102030405060708 {
		t.Errorf("status id %#x", got)
	}
	if got := binary.LittleEndian.Uint64(b[8:16]); got != 0x1112131415161718 {
		t.Errorf("author id %#x", got)
	}
	if got := binary.LittleEndian.Uint32(b[16:20]); got != 0x21222324 {
		t.Errorf("flags %#x", got)
	}
}

// TestRedisTimelines starts a redis-server (only if one is installed: the
// test never installs it), pushes to, trims and reads timelines, then stops
// the server and checks that its process is gone.
func TestRedisTimelines(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	addr, stop, err := startRedis(ctx, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	rt := newRedisTimelines(addr, 4)
	defer rt.close()
	pid := redisPID(ctx, t, rt)

	if err := rt.flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Three pushes of one entry each to owners 1, 2 and 3, capacity 2: every
	// timeline keeps the newest two.
	owners := []uint64{1, 2, 3}
	for i := uint64(1); i <= 3; i++ {
		if err := rt.push(ctx, encodeEntry(i, 100+i, uint32(i)), owners, 2); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range owners {
		got, err := rt.c.LRange(ctx, timelineKey(o), 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := []string{entryString(3), entryString(2)} // newest first
		if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
			t.Errorf("owner %d: list %q, want %q", o, got, want)
		}
	}
	for _, c := range []struct {
		owner      uint64
		limit, out int
	}{
		{1, 10, 2}, {2, 2, 2}, {3, 1, 1}, {4, 10, 0}, // owner 4 has nothing
	} {
		n, err := rt.read(ctx, c.owner, c.limit)
		if err != nil {
			t.Fatal(err)
		}
		if n != c.out {
			t.Errorf("read(owner %d, limit %d) = %d, want %d", c.owner, c.limit, n, c.out)
		}
	}
	for _, c := range []struct {
		owners     []uint64
		limit, out int
	}{
		{[]uint64{1, 2, 3, 4}, 10, 6}, {[]uint64{1, 2, 3, 4}, 1, 3}, {[]uint64{4, 5}, 10, 0}, {nil, 10, 0},
	} {
		n, err := rt.readMany(ctx, c.owners, c.limit)
		if err != nil {
			t.Fatal(err)
		}
		if n != c.out {
			t.Errorf("readMany(%v, limit %d) = %d, want %d", c.owners, c.limit, n, c.out)
		}
	}
	if err := rt.push(ctx, encodeEntry(9, 9, 0), owners, 0); err == nil {
		t.Error("push with capacity 0 did not fail")
	}
	if err := rt.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := rt.readMany(ctx, owners, 10); err != nil || n != 0 {
		t.Errorf("after flush: readMany = %d, %v; want 0", n, err)
	}

	stop()
	stop() // a second call is harmless
	if processRunning(pid) {
		t.Errorf("redis-server pid %d still running after stop", pid)
	}
	if redisPing(addr) == nil {
		t.Errorf("%s still answers PING after stop", addr)
	}
}

// TestRedisStopsWithContext checks that the server stops when the context
// given to startRedis is done.
func TestRedisStopsWithContext(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	runCtx, runCancel := context.WithCancel(ctx)
	addr, stop, err := startRedis(runCtx, t.TempDir(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	rt := newRedisTimelines(addr, 1)
	pid := redisPID(ctx, t, rt)
	rt.close()

	runCancel()
	stop() // returns once the process has exited
	if processRunning(pid) {
		t.Errorf("redis-server pid %d still running after its context was cancelled", pid)
	}
}

// redisPID returns the process id the server reports (INFO server).
func redisPID(ctx context.Context, t *testing.T, rt *redisTimelines) int {
	t.Helper()
	info, err := rt.c.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("INFO process_id %q: %v", v, err)
			}
			return pid
		}
	}
	t.Fatalf("INFO server has no process_id:\n%s", info)
	return 0
}

// processRunning reports whether process pid exists.
func processRunning(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	return p.Signal(syscall.Signal(0)) == nil
}

// entryString is encodeEntry(i, 100+i, i) as the Redis list holds it.
func entryString(i uint64) string {
	b := encodeEntry(i, 100+i, uint32(i))
	return string(b[:])
}
